/*
 * Foundation/Foundation.h — compile-check stand-in (NOT Apple's header).
 *
 * Hand-written declarations of exactly the Foundation API that the shim (shim/applevz*.m)
 * uses, with the same types, nullability and ownership conventions as the real
 * SDK, so that `clang -fobjc-arc -Werror` on a non-Apple host catches the same
 * mistakes (missing bridge casts, unknown selectors, wrong argument types)
 * that it would on a Mac. Add a declaration here when the shim starts using a
 * new API; never copy Apple's headers.
 */
#ifndef AVZ_CHECK_FOUNDATION_H
#define AVZ_CHECK_FOUNDATION_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <objc/objc.h>
#include <objc/NSObject.h>
#include <CoreFoundation/CoreFoundation.h>

/* ---- NSObjCRuntime ---------------------------------------------------------- */
typedef long NSInteger;
typedef unsigned long NSUInteger;
#define NSIntegerMax __LONG_MAX__
#define NSUIntegerMax (__LONG_MAX__ * 2UL + 1UL)
#define NSNotFound NSIntegerMax

#define NS_ENUM(_type, _name) enum _name : _type _name; enum _name : _type
#define NS_OPTIONS(_type, _name) enum _name : _type _name; enum _name : _type
#define NS_ERROR_ENUM(_domain, _name) enum _name : NSInteger _name; enum _name : NSInteger
#define NS_ASSUME_NONNULL_BEGIN _Pragma("clang assume_nonnull begin")
#define NS_ASSUME_NONNULL_END _Pragma("clang assume_nonnull end")
#define NS_UNAVAILABLE __attribute__((unavailable))
#define NS_DESIGNATED_INITIALIZER __attribute__((objc_designated_initializer))
#define NS_FORMAT_FUNCTION(F, A) __attribute__((format(__NSString__, F, A)))
#define NS_SWIFT_NAME(_name)
/* API_AVAILABLE(macos(N)) as the real SDK spells it (<os/availability.h>), for
 * macOS only: API_AVAILABLE(macos(12.0)) -> availability(macos, introduced = 12.0). */
#define API_AVAILABLE(platform_version) AVZ_API_AVAILABLE_##platform_version
#define AVZ_API_AVAILABLE_macos(v) __attribute__((availability(macos, introduced = v)))

#ifndef MIN
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#endif
#ifndef MAX
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#endif

NS_ASSUME_NONNULL_BEGIN

@class NSString, NSDictionary<KeyType, ObjectType>, NSArray<ObjectType>, NSError, NSURL;

@protocol NSCopying
- (id)copyWithZone:(nullable void *)zone;
@end

@protocol NSMutableCopying
- (id)mutableCopyWithZone:(nullable void *)zone;
@end

/* ---- NSString ----------------------------------------------------------------- */
@interface NSString : NSObject <NSCopying, NSMutableCopying>
@property (readonly) NSUInteger length;
+ (nullable instancetype)stringWithUTF8String:(const char *)nullTerminatedCString;
+ (instancetype)stringWithFormat:(NSString *)format, ... NS_FORMAT_FUNCTION(1, 2);
- (instancetype)initWithFormat:(NSString *)format, ... NS_FORMAT_FUNCTION(1, 2);
@property (nullable, readonly) const char *UTF8String __attribute__((objc_returns_inner_pointer));
- (BOOL)isEqualToString:(NSString *)aString;
@end

/* ---- NSValue / NSNumber ----------------------------------------------------- */
@interface NSValue : NSObject <NSCopying>
@end

@interface NSNumber : NSValue
+ (NSNumber *)numberWithInteger:(NSInteger)value;
+ (NSNumber *)numberWithInt:(int)value;
+ (NSNumber *)numberWithBool:(BOOL)value;
+ (NSNumber *)numberWithUnsignedInt:(unsigned int)value;
@property (readonly) NSInteger integerValue;
@property (readonly) int intValue;
@end

/* ---- NSArray / NSMutableArray -------------------------------------------------- */
@interface NSArray<__covariant ObjectType> : NSObject <NSCopying, NSMutableCopying>
@property (readonly) NSUInteger count;
- (ObjectType)objectAtIndex:(NSUInteger)index;
- (ObjectType)objectAtIndexedSubscript:(NSUInteger)idx;
@property (nullable, nonatomic, readonly) ObjectType firstObject;
+ (instancetype)arrayWithObjects:(const ObjectType _Nonnull[_Nonnull])objects count:(NSUInteger)cnt;
@end

@interface NSMutableArray<ObjectType> : NSArray<ObjectType>
+ (instancetype)array;
- (void)addObject:(ObjectType)anObject;
- (void)removeObjectAtIndex:(NSUInteger)index;
@end

/* ---- NSDictionary / NSMutableDictionary ------------------------------------- */
@interface NSDictionary<__covariant KeyType, __covariant ObjectType> : NSObject <NSCopying, NSMutableCopying>
@property (readonly) NSUInteger count;
- (nullable ObjectType)objectForKey:(KeyType)aKey;
- (nullable ObjectType)objectForKeyedSubscript:(KeyType)key;
@property (readonly, copy) NSArray<ObjectType> *allValues;
+ (instancetype)dictionaryWithObjects:(const ObjectType _Nonnull[_Nullable])objects
                              forKeys:(const KeyType<NSCopying> _Nonnull[_Nullable])keys
                                count:(NSUInteger)cnt;
@end

@interface NSMutableDictionary<KeyType, ObjectType> : NSDictionary<KeyType, ObjectType>
+ (instancetype)dictionary;
- (void)setObject:(ObjectType)anObject forKey:(KeyType<NSCopying>)aKey;
- (void)setObject:(nullable ObjectType)obj forKeyedSubscript:(KeyType<NSCopying>)key;
- (void)removeObjectForKey:(KeyType)aKey;
@end

/* ---- NSData --------------------------------------------------------------------- */
@interface NSData : NSObject <NSCopying, NSMutableCopying>
@property (readonly) NSUInteger length;
@property (readonly) const void *bytes __attribute__((objc_returns_inner_pointer));
+ (instancetype)dataWithBytes:(nullable const void *)bytes length:(NSUInteger)length;
- (instancetype)initWithBytes:(nullable const void *)bytes length:(NSUInteger)length;
- (void)getBytes:(void *)buffer length:(NSUInteger)length;
@end

/* ---- NSError -------------------------------------------------------------------- */
typedef NSString *NSErrorDomain;
typedef NSString *NSErrorUserInfoKey;

extern NSErrorDomain const NSCocoaErrorDomain;
extern NSErrorDomain const NSPOSIXErrorDomain;
extern NSErrorUserInfoKey const NSUnderlyingErrorKey;
extern NSErrorUserInfoKey const NSLocalizedDescriptionKey;
extern NSErrorUserInfoKey const NSLocalizedFailureReasonErrorKey;
extern NSErrorUserInfoKey const NSFilePathErrorKey;

@interface NSError : NSObject <NSCopying>
- (instancetype)initWithDomain:(NSErrorDomain)domain
                          code:(NSInteger)code
                      userInfo:(nullable NSDictionary<NSErrorUserInfoKey, id> *)dict
    NS_DESIGNATED_INITIALIZER;
+ (instancetype)errorWithDomain:(NSErrorDomain)domain
                           code:(NSInteger)code
                       userInfo:(nullable NSDictionary<NSErrorUserInfoKey, id> *)dict;
@property (readonly, copy) NSErrorDomain domain;
@property (readonly) NSInteger code;
@property (readonly, copy) NSDictionary<NSErrorUserInfoKey, id> *userInfo;
@property (readonly, copy) NSString *localizedDescription;
@end

/* ---- NSException ------------------------------------------------------------- */
typedef NSString *NSExceptionName;

/* As in the SDK: marked as an exception class, so @catch (NSException *) matches it by
 * its runtime type information (OBJC_EHTYPE_$_NSException, defined by Foundation). */
#if __OBJC2__
__attribute__((__objc_exception__))
#endif
@interface NSException : NSObject <NSCopying>
@property (readonly, copy) NSExceptionName name;
@property (nullable, readonly, copy) NSString *reason;
@end

/* ---- NSURL ---------------------------------------------------------------------- */
@interface NSURL : NSObject <NSCopying>
+ (NSURL *)fileURLWithPath:(NSString *)path;
+ (NSURL *)fileURLWithPath:(NSString *)path isDirectory:(BOOL)isDir;
@property (nullable, readonly, copy) NSString *path;
@property (readonly) const char *fileSystemRepresentation __attribute__((objc_returns_inner_pointer));
- (BOOL)checkResourceIsReachableAndReturnError:(NSError **)error;
@end

/* ---- NSFileHandle ----------------------------------------------------------------- */
@interface NSFileHandle : NSObject
- (instancetype)initWithFileDescriptor:(int)fd closeOnDealloc:(BOOL)closeopt NS_DESIGNATED_INITIALIZER;
- (instancetype)initWithFileDescriptor:(int)fd;
@property (readonly) int fileDescriptor;
@end

/* ---- NSFileManager ---------------------------------------------------------------- */
@interface NSFileManager : NSObject
@property (class, readonly, strong) NSFileManager *defaultManager;
- (BOOL)fileExistsAtPath:(NSString *)path isDirectory:(nullable BOOL *)isDirectory;
@end

/* ---- NSKeyValueObserving ----------------------------------------------------- */
typedef NS_OPTIONS(NSUInteger, NSKeyValueObservingOptions) {
    NSKeyValueObservingOptionNew = 0x01,
    NSKeyValueObservingOptionOld = 0x02,
    NSKeyValueObservingOptionInitial = 0x04,
    NSKeyValueObservingOptionPrior = 0x08,
};

typedef NSString *NSKeyValueChangeKey;
extern NSKeyValueChangeKey const NSKeyValueChangeKindKey;
extern NSKeyValueChangeKey const NSKeyValueChangeNewKey;
extern NSKeyValueChangeKey const NSKeyValueChangeOldKey;

@interface NSObject (NSKeyValueObserving)
- (void)observeValueForKeyPath:(nullable NSString *)keyPath
                      ofObject:(nullable id)object
                        change:(nullable NSDictionary<NSKeyValueChangeKey, id> *)change
                       context:(nullable void *)context;
@end

@interface NSObject (NSKeyValueObserverRegistration)
- (void)addObserver:(NSObject *)observer
         forKeyPath:(NSString *)keyPath
            options:(NSKeyValueObservingOptions)options
            context:(nullable void *)context;
- (void)removeObserver:(NSObject *)observer
            forKeyPath:(NSString *)keyPath
               context:(nullable void *)context;
- (void)removeObserver:(NSObject *)observer forKeyPath:(NSString *)keyPath;
@end

NS_ASSUME_NONNULL_END

#endif
