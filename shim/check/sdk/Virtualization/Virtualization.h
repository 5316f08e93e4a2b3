/*
 * Virtualization/Virtualization.h — compile-check stand-in (NOT Apple's header).
 *
 * Hand-written from Apple's public documentation of Virtualization.framework
 * (see /work/shared/VZ-FACTS.md), limited to the classes, selectors and enums
 * the shim (shim/applevz*.m) uses. What matters for the check and must match the real SDK:
 *   - availability: every declaration carries the macOS version that introduced it
 *     (VZ_AVAILABLE(N)), so -Werror=unguarded-availability rejects an unguarded use
 *     when the deployment target is older;
 *   - architecture: save/restore and VZLinuxRosettaDirectoryShare (with
 *     VZLinuxRosettaAvailability) exist only `#if defined(__arm64__)`, so a use on
 *     x86_64 does not compile at all, as with the real SDK;
 *   - nullability, ownership and NS_UNAVAILABLE initialisers.
 * Add a declaration here (with its real availability) before the shim uses it.
 *
 * Checked declaration by declaration against the SDK headers of macOS SDKs 11.3 to 26.1
 * (VZ*.h) and Apple's documentation. Deliberate differences: members the shim does not
 * use are left out; VZDirectorySharingDeviceConfiguration carries 12.0 although the
 * SDK header gives it no availability attribute (Apple documents it as macOS 12.0+,
 * so this is only stricter than a Mac build).
 */
#ifndef AVZ_CHECK_VIRTUALIZATION_H
#define AVZ_CHECK_VIRTUALIZATION_H

#import <Foundation/Foundation.h>
#include <dispatch/dispatch.h>

#define VZ_AVAILABLE(v) __attribute__((availability(macos, introduced = v)))

NS_ASSUME_NONNULL_BEGIN

/* ---- Errors ------------------------------------------------------------------- */

extern NSErrorDomain const VZErrorDomain VZ_AVAILABLE(11.0);

typedef NS_ERROR_ENUM(VZErrorDomain, VZErrorCode){
    VZErrorInternal VZ_AVAILABLE(11.0) = 1,
    VZErrorInvalidVirtualMachineConfiguration VZ_AVAILABLE(11.0) = 2,
    VZErrorInvalidVirtualMachineState VZ_AVAILABLE(11.0) = 3,
    VZErrorInvalidVirtualMachineStateTransition VZ_AVAILABLE(11.0) = 4,
    VZErrorInvalidDiskImage VZ_AVAILABLE(11.0) = 5,
    VZErrorVirtualMachineLimitExceeded VZ_AVAILABLE(12.0) = 6,
    VZErrorNetworkError VZ_AVAILABLE(13.0) = 7,
    VZErrorOutOfDiskSpace VZ_AVAILABLE(13.0) = 8,
    VZErrorOperationCancelled VZ_AVAILABLE(13.0) = 9,
    VZErrorNotSupported VZ_AVAILABLE(13.0) = 10,
    VZErrorSave VZ_AVAILABLE(14.0) = 11,
    VZErrorRestore VZ_AVAILABLE(14.0) = 12,
} VZ_AVAILABLE(11.0);

/* ---- Boot loaders ----------------------------------------------------------- */

VZ_AVAILABLE(11.0)
@interface VZBootLoader : NSObject <NSCopying>
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
@end

VZ_AVAILABLE(11.0)
@interface VZLinuxBootLoader : VZBootLoader
- (instancetype)initWithKernelURL:(NSURL *)kernelURL NS_DESIGNATED_INITIALIZER;
@property (copy) NSURL *kernelURL;
@property (copy) NSString *commandLine;
@property (nullable, copy) NSURL *initialRamdiskURL;
@end

typedef NS_OPTIONS(NSUInteger, VZEFIVariableStoreInitializationOptions){
    VZEFIVariableStoreInitializationOptionAllowOverwrite = 1UL << 0,
} VZ_AVAILABLE(13.0);

VZ_AVAILABLE(13.0)
@interface VZEFIVariableStore : NSObject
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
- (instancetype)initWithURL:(NSURL *)URL;
- (nullable instancetype)initCreatingVariableStoreAtURL:(NSURL *)URL
                                                options:(VZEFIVariableStoreInitializationOptions)options
                                                  error:(NSError **)error;
@property (readonly, copy) NSURL *URL;
@end

VZ_AVAILABLE(13.0)
@interface VZEFIBootLoader : VZBootLoader
- (instancetype)init NS_DESIGNATED_INITIALIZER;
@property (nullable, strong) VZEFIVariableStore *variableStore;
@end

/* ---- Platform ---------------------------------------------------------------- */

VZ_AVAILABLE(13.0)
@interface VZGenericMachineIdentifier : NSObject <NSCopying>
- (instancetype)init; /* a new unique identifier */
- (nullable instancetype)initWithDataRepresentation:(NSData *)dataRepresentation;
@property (readonly, copy) NSData *dataRepresentation;
@end

VZ_AVAILABLE(12.0)
@interface VZPlatformConfiguration : NSObject <NSCopying>
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
@end

VZ_AVAILABLE(12.0)
@interface VZGenericPlatformConfiguration : VZPlatformConfiguration
- (instancetype)init NS_DESIGNATED_INITIALIZER;
@property (copy) VZGenericMachineIdentifier *machineIdentifier VZ_AVAILABLE(13.0);
@end

/* ---- Storage --------------------------------------------------------------------- */

typedef NS_ENUM(NSInteger, VZDiskImageCachingMode){
    VZDiskImageCachingModeAutomatic = 0,
    VZDiskImageCachingModeUncached = 1,
    VZDiskImageCachingModeCached = 2,
} VZ_AVAILABLE(12.0);

typedef NS_ENUM(NSInteger, VZDiskImageSynchronizationMode){
    VZDiskImageSynchronizationModeFull = 1,
    VZDiskImageSynchronizationModeFsync = 2,
    VZDiskImageSynchronizationModeNone = 3,
} VZ_AVAILABLE(12.0);

VZ_AVAILABLE(11.0)
@interface VZStorageDeviceAttachment : NSObject
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
@end

VZ_AVAILABLE(11.0)
@interface VZDiskImageStorageDeviceAttachment : VZStorageDeviceAttachment
- (nullable instancetype)initWithURL:(NSURL *)url
                            readOnly:(BOOL)readOnly
                               error:(NSError **)error NS_DESIGNATED_INITIALIZER;
- (nullable instancetype)initWithURL:(NSURL *)url
                            readOnly:(BOOL)readOnly
                         cachingMode:(VZDiskImageCachingMode)cachingMode
                 synchronizationMode:(VZDiskImageSynchronizationMode)synchronizationMode
                               error:(NSError **)error NS_DESIGNATED_INITIALIZER VZ_AVAILABLE(12.0);
@property (readonly, copy) NSURL *URL;
@property (readonly, getter=isReadOnly) BOOL readOnly;
@end

VZ_AVAILABLE(11.0)
@interface VZStorageDeviceConfiguration : NSObject <NSCopying>
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
@property (readonly, strong) VZStorageDeviceAttachment *attachment;
@end

VZ_AVAILABLE(11.0)
@interface VZVirtioBlockDeviceConfiguration : VZStorageDeviceConfiguration
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
- (instancetype)initWithAttachment:(VZStorageDeviceAttachment *)attachment NS_DESIGNATED_INITIALIZER;
/* At most 20 bytes, ASCII. */
+ (BOOL)validateBlockDeviceIdentifier:(NSString *)blockDeviceIdentifier
                                error:(NSError **)error VZ_AVAILABLE(12.3);
@property (copy) NSString *blockDeviceIdentifier VZ_AVAILABLE(12.3);
@end

/* Valid only with VZGenericPlatformConfiguration. */
VZ_AVAILABLE(14.0)
@interface VZNVMExpressControllerDeviceConfiguration : VZStorageDeviceConfiguration
- (instancetype)initWithAttachment:(VZStorageDeviceAttachment *)attachment NS_DESIGNATED_INITIALIZER;
@end

/* ---- Network ------------------------------------------------------------------ */

VZ_AVAILABLE(11.0)
@interface VZMACAddress : NSObject <NSCopying>
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
- (nullable instancetype)initWithString:(NSString *)string;
+ (instancetype)randomLocallyAdministeredAddress;
@property (readonly, copy) NSString *string;
@end

VZ_AVAILABLE(11.0)
@interface VZNetworkDeviceAttachment : NSObject
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
@end

VZ_AVAILABLE(11.0)
@interface VZNATNetworkDeviceAttachment : VZNetworkDeviceAttachment
- (instancetype)init NS_DESIGNATED_INITIALIZER;
@end

/* The file handle holds a connected datagram socket. MTU: default 1500, 1500...65535. */
VZ_AVAILABLE(11.0)
@interface VZFileHandleNetworkDeviceAttachment : VZNetworkDeviceAttachment
- (instancetype)initWithFileHandle:(NSFileHandle *)fileHandle NS_DESIGNATED_INITIALIZER;
@property (readonly, strong) NSFileHandle *fileHandle;
@property (readwrite) NSInteger maximumTransmissionUnit VZ_AVAILABLE(13.0);
@end

VZ_AVAILABLE(11.0)
@interface VZNetworkDeviceConfiguration : NSObject <NSCopying>
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
@property (copy) VZMACAddress *MACAddress;
@property (nullable, strong) VZNetworkDeviceAttachment *attachment;
@end

VZ_AVAILABLE(11.0)
@interface VZVirtioNetworkDeviceConfiguration : VZNetworkDeviceConfiguration
- (instancetype)init NS_DESIGNATED_INITIALIZER;
@end

/* Runtime device (VZVirtualMachine.networkDevices), one per configured network device.
 * Its `attachment` becomes nil when the framework reports the attachment disconnected. */
VZ_AVAILABLE(12.0)
@interface VZNetworkDevice : NSObject
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
@property (nullable, strong) VZNetworkDeviceAttachment *attachment;
@end

/* ---- Serial ports -------------------------------------------------------------- */

VZ_AVAILABLE(11.0)
@interface VZSerialPortAttachment : NSObject
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
@end

VZ_AVAILABLE(11.0)
@interface VZFileHandleSerialPortAttachment : VZSerialPortAttachment
- (instancetype)initWithFileHandleForReading:(nullable NSFileHandle *)fileHandleForReading
                        fileHandleForWriting:(nullable NSFileHandle *)fileHandleForWriting
    NS_DESIGNATED_INITIALIZER;
@property (nullable, readonly, strong) NSFileHandle *fileHandleForReading;
@property (nullable, readonly, strong) NSFileHandle *fileHandleForWriting;
@end

VZ_AVAILABLE(11.0)
@interface VZFileSerialPortAttachment : VZSerialPortAttachment
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
- (nullable instancetype)initWithURL:(NSURL *)url
                              append:(BOOL)shouldAppend
                               error:(NSError **)error NS_DESIGNATED_INITIALIZER;
@property (readonly, copy) NSURL *URL;
@property (readonly) BOOL append;
@end

VZ_AVAILABLE(11.0)
@interface VZSerialPortConfiguration : NSObject <NSCopying>
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
@property (nullable, strong) VZSerialPortAttachment *attachment;
@end

VZ_AVAILABLE(11.0)
@interface VZVirtioConsoleDeviceSerialPortConfiguration : VZSerialPortConfiguration
- (instancetype)init NS_DESIGNATED_INITIALIZER;
@end

/* ---- Console devices (ports with names) ---------------------------------------- */

VZ_AVAILABLE(13.0)
@interface VZConsolePortConfiguration : NSObject <NSCopying>
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
@property (nullable, strong) VZSerialPortAttachment *attachment;
@end

VZ_AVAILABLE(13.0)
@interface VZVirtioConsolePortConfiguration : VZConsolePortConfiguration
- (instancetype)init NS_DESIGNATED_INITIALIZER;
@property (nullable, copy) NSString *name;
@property BOOL isConsole;
@end

VZ_AVAILABLE(13.0)
@interface VZVirtioConsolePortConfigurationArray : NSObject <NSCopying>
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
@property uint32_t maximumPortCount;
- (nullable VZVirtioConsolePortConfiguration *)objectAtIndexedSubscript:(NSUInteger)portIndex;
- (void)setObject:(nullable VZVirtioConsolePortConfiguration *)configuration
    atIndexedSubscript:(NSUInteger)portIndex;
@end

VZ_AVAILABLE(13.0)
@interface VZConsoleDeviceConfiguration : NSObject <NSCopying>
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
@end

VZ_AVAILABLE(13.0)
@interface VZVirtioConsoleDeviceConfiguration : VZConsoleDeviceConfiguration
- (instancetype)init NS_DESIGNATED_INITIALIZER;
@property (readonly, strong) VZVirtioConsolePortConfigurationArray *ports;
@end

/* ---- Entropy, memory balloon --------------------------------------------------- */

VZ_AVAILABLE(11.0)
@interface VZEntropyDeviceConfiguration : NSObject <NSCopying>
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
@end

VZ_AVAILABLE(11.0)
@interface VZVirtioEntropyDeviceConfiguration : VZEntropyDeviceConfiguration
- (instancetype)init NS_DESIGNATED_INITIALIZER;
@end

VZ_AVAILABLE(11.0)
@interface VZMemoryBalloonDeviceConfiguration : NSObject <NSCopying>
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
@end

VZ_AVAILABLE(11.0)
@interface VZVirtioTraditionalMemoryBalloonDeviceConfiguration : VZMemoryBalloonDeviceConfiguration
- (instancetype)init NS_DESIGNATED_INITIALIZER;
@end

/* Runtime device (VZVirtualMachine.memoryBalloonDevices). */
VZ_AVAILABLE(11.0)
@interface VZMemoryBalloonDevice : NSObject
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
@end

/* Rounded down to a MiB, clamped to minimumAllowedMemorySize...memorySize. */
VZ_AVAILABLE(11.0)
@interface VZVirtioTraditionalMemoryBalloonDevice : VZMemoryBalloonDevice
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
@property uint64_t targetVirtualMachineMemorySize;
@end

/* ---- Sockets (virtio-vsock) -------------------------------------------------------- */

VZ_AVAILABLE(11.0)
@interface VZSocketDeviceConfiguration : NSObject <NSCopying>
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
@end

VZ_AVAILABLE(11.0)
@interface VZVirtioSocketDeviceConfiguration : VZSocketDeviceConfiguration
- (instancetype)init NS_DESIGNATED_INITIALIZER;
@end

VZ_AVAILABLE(11.0)
@interface VZVirtioSocketConnection : NSObject
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
@property (readonly) uint32_t destinationPort;
@property (readonly) uint32_t sourcePort;
@property (readonly) int fileDescriptor; /* -1 once closed */
- (void)close;
@end

@class VZVirtioSocketListener, VZVirtioSocketDevice;

VZ_AVAILABLE(11.0)
@protocol VZVirtioSocketListenerDelegate <NSObject>
@optional
- (BOOL)listener:(VZVirtioSocketListener *)listener
    shouldAcceptNewConnection:(VZVirtioSocketConnection *)connection
             fromSocketDevice:(VZVirtioSocketDevice *)socketDevice;
@end

VZ_AVAILABLE(11.0)
@interface VZVirtioSocketListener : NSObject
@property (nullable, weak) id<VZVirtioSocketListenerDelegate> delegate;
@end

/* Runtime device (VZVirtualMachine.socketDevices). */
VZ_AVAILABLE(11.0)
@interface VZSocketDevice : NSObject
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
@end

VZ_AVAILABLE(11.0)
@interface VZVirtioSocketDevice : VZSocketDevice
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
- (void)setSocketListener:(VZVirtioSocketListener *)listener forPort:(uint32_t)port;
- (void)removeSocketListenerForPort:(uint32_t)port;
- (void)connectToPort:(uint32_t)port
    completionHandler:(void (^)(VZVirtioSocketConnection *_Nullable connection,
                                NSError *_Nullable error))completionHandler;
@end

/* ---- Directory sharing (virtio-fs) ----------------------------------------------- */

VZ_AVAILABLE(12.0)
@interface VZSharedDirectory : NSObject
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
- (instancetype)initWithURL:(NSURL *)url readOnly:(BOOL)readOnly NS_DESIGNATED_INITIALIZER;
@property (readonly, copy) NSURL *URL;
@property (readonly, getter=isReadOnly) BOOL readOnly;
@end

VZ_AVAILABLE(12.0)
@interface VZDirectoryShare : NSObject
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
@end

VZ_AVAILABLE(12.0)
@interface VZSingleDirectoryShare : VZDirectoryShare
- (instancetype)initWithDirectory:(VZSharedDirectory *)directory NS_DESIGNATED_INITIALIZER;
@property (readonly, strong) VZSharedDirectory *directory;
@end

/* Invalid names in -initWithDirectories: raise an exception: validate them first. */
VZ_AVAILABLE(12.0)
@interface VZMultipleDirectoryShare : VZDirectoryShare
- (instancetype)init;
- (instancetype)initWithDirectories:(NSDictionary<NSString *, VZSharedDirectory *> *)directories
    NS_DESIGNATED_INITIALIZER;
@property (readonly, copy) NSDictionary<NSString *, VZSharedDirectory *> *directories;
+ (BOOL)validateName:(NSString *)name error:(NSError **)error;
@end

#if defined(__arm64__)
typedef NS_ENUM(NSInteger, VZLinuxRosettaAvailability){
    VZLinuxRosettaAvailabilityNotSupported = 0,
    VZLinuxRosettaAvailabilityNotInstalled = 1,
    VZLinuxRosettaAvailabilityInstalled = 2,
} VZ_AVAILABLE(13.0);

VZ_AVAILABLE(13.0)
@interface VZLinuxRosettaDirectoryShare : VZDirectoryShare
- (nullable instancetype)initWithError:(NSError **)error NS_DESIGNATED_INITIALIZER;
@property (class, readonly) VZLinuxRosettaAvailability availability;
@end
#endif

/* The SDK header has no availability attribute here; 12.0 is Apple's documented
 * availability (stricter than the SDK, see the top of this file). */
VZ_AVAILABLE(12.0)
@interface VZDirectorySharingDeviceConfiguration : NSObject <NSCopying>
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
@end

/* An invalid tag in -initWithTag: raises an exception: validate it first. */
VZ_AVAILABLE(12.0)
@interface VZVirtioFileSystemDeviceConfiguration : VZDirectorySharingDeviceConfiguration
- (instancetype)initWithTag:(NSString *)tag NS_DESIGNATED_INITIALIZER;
+ (BOOL)validateTag:(NSString *)tag error:(NSError **)error;
@property (copy) NSString *tag;
@property (nullable, strong) VZDirectoryShare *share;
@end

/* ---- Configuration ---------------------------------------------------------------- */

VZ_AVAILABLE(11.0)
@interface VZVirtualMachineConfiguration : NSObject <NSCopying>
@property (nullable, strong) VZBootLoader *bootLoader;
@property uint64_t memorySize;
@property NSUInteger CPUCount;
@property (strong) VZPlatformConfiguration *platform VZ_AVAILABLE(12.0);
@property (copy) NSArray<VZStorageDeviceConfiguration *> *storageDevices;
@property (copy) NSArray<VZNetworkDeviceConfiguration *> *networkDevices;
@property (copy) NSArray<VZSerialPortConfiguration *> *serialPorts;
@property (copy) NSArray<VZEntropyDeviceConfiguration *> *entropyDevices;
@property (copy) NSArray<VZMemoryBalloonDeviceConfiguration *> *memoryBalloonDevices;
@property (copy) NSArray<VZSocketDeviceConfiguration *> *socketDevices;
@property (copy) NSArray<VZDirectorySharingDeviceConfiguration *> *directorySharingDevices
    VZ_AVAILABLE(12.0);
@property (copy) NSArray<VZConsoleDeviceConfiguration *> *consoleDevices VZ_AVAILABLE(13.0);
- (BOOL)validateWithError:(NSError **)error;
#if defined(__arm64__)
- (BOOL)validateSaveRestoreSupportWithError:(NSError **)error VZ_AVAILABLE(14.0);
#endif
@property (class, readonly) uint64_t minimumAllowedMemorySize;
@property (class, readonly) uint64_t maximumAllowedMemorySize;
@property (class, readonly) NSUInteger minimumAllowedCPUCount;
@property (class, readonly) NSUInteger maximumAllowedCPUCount;
@end

/* ---- Virtual machine ----------------------------------------------------------- */

typedef NS_ENUM(NSInteger, VZVirtualMachineState){
    VZVirtualMachineStateStopped = 0,
    VZVirtualMachineStateRunning = 1,
    VZVirtualMachineStatePaused = 2,
    VZVirtualMachineStateError = 3,
    VZVirtualMachineStateStarting = 4,
    VZVirtualMachineStatePausing = 5,
    VZVirtualMachineStateResuming = 6,
    VZVirtualMachineStateStopping VZ_AVAILABLE(12.0) = 7,
    VZVirtualMachineStateSaving VZ_AVAILABLE(14.0) = 8,
    VZVirtualMachineStateRestoring VZ_AVAILABLE(14.0) = 9,
} VZ_AVAILABLE(11.0);

@class VZVirtualMachine;

VZ_AVAILABLE(11.0)
@protocol VZVirtualMachineDelegate <NSObject>
@optional
- (void)guestDidStopVirtualMachine:(VZVirtualMachine *)virtualMachine;
- (void)virtualMachine:(VZVirtualMachine *)virtualMachine didStopWithError:(NSError *)error;
- (void)virtualMachine:(VZVirtualMachine *)virtualMachine
                         networkDevice:(VZNetworkDevice *)networkDevice
    attachmentWasDisconnectedWithError:(NSError *)error VZ_AVAILABLE(12.0);
@end

VZ_AVAILABLE(11.0)
@interface VZVirtualMachine : NSObject
+ (instancetype)new NS_UNAVAILABLE;
- (instancetype)init NS_UNAVAILABLE;
- (instancetype)initWithConfiguration:(VZVirtualMachineConfiguration *)configuration;
- (instancetype)initWithConfiguration:(VZVirtualMachineConfiguration *)configuration
                                queue:(dispatch_queue_t)queue NS_DESIGNATED_INITIALIZER;

@property (class, readonly, getter=isSupported) BOOL supported;
@property (readonly) VZVirtualMachineState state;
@property (nullable, weak) id<VZVirtualMachineDelegate> delegate;

@property (readonly) BOOL canStart;
@property (readonly) BOOL canStop VZ_AVAILABLE(12.0);
@property (readonly) BOOL canPause;
@property (readonly) BOOL canResume;
@property (readonly) BOOL canRequestStop;

@property (readonly, copy) NSArray<VZMemoryBalloonDevice *> *memoryBalloonDevices;
@property (readonly, copy) NSArray<VZNetworkDevice *> *networkDevices VZ_AVAILABLE(12.0);
@property (readonly, copy) NSArray<VZSocketDevice *> *socketDevices;

- (void)startWithCompletionHandler:(void (^)(NSError *_Nullable errorOrNil))completionHandler;
- (void)stopWithCompletionHandler:(void (^)(NSError *_Nullable errorOrNil))completionHandler
    VZ_AVAILABLE(12.0);
- (void)pauseWithCompletionHandler:(void (^)(NSError *_Nullable errorOrNil))completionHandler;
- (void)resumeWithCompletionHandler:(void (^)(NSError *_Nullable errorOrNil))completionHandler;
#if defined(__arm64__)
- (void)restoreMachineStateFromURL:(NSURL *)saveFileURL
                 completionHandler:(void (^)(NSError *_Nullable errorOrNil))completionHandler
    VZ_AVAILABLE(14.0);
- (void)saveMachineStateToURL:(NSURL *)saveFileURL
            completionHandler:(void (^)(NSError *_Nullable errorOrNil))completionHandler
    VZ_AVAILABLE(14.0);
#endif
- (BOOL)requestStopWithError:(NSError **)error;
@end

NS_ASSUME_NONNULL_END

#endif
