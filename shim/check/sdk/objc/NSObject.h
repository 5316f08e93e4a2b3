/*
 * objc/NSObject.h — compile-check stand-in (NOT Apple's header).
 * The root class and the NSObject protocol, reduced to what the shim uses.
 */
#ifndef AVZ_CHECK_OBJC_NSOBJECT_H
#define AVZ_CHECK_OBJC_NSOBJECT_H

#include <objc/objc.h>

#pragma clang assume_nonnull begin

@class NSString;

@protocol NSObject
- (BOOL)isEqual:(nullable id)object;
- (instancetype)self;
- (BOOL)respondsToSelector:(SEL)aSelector;
- (BOOL)isKindOfClass:(Class)aClass;
- (Class)class;
@property (readonly, copy) NSString *description;
@end

__attribute__((objc_root_class))
@interface NSObject <NSObject> {
    Class isa;
}
+ (instancetype)alloc;
+ (instancetype)new;
+ (Class)class;
- (instancetype)init;
- (void)dealloc;
- (id)copy;
- (id)mutableCopy;
@end

#pragma clang assume_nonnull end

#endif
