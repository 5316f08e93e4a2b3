/*
 * shim/applevz_config.m — avz_config (AVZConfiguration), the host queries, and the
 * configuration's boot loader, platform and validation.
 *
 * Part of the macOS shim (shim/applevz*.m, ARC Objective-C): see shim/applevz.m for the
 * design and shim/applevz_internal.h for what each file provides. The devices a
 * configuration can hold are in shim/applevz_devices.m.
 */

#include "applevz_internal.h"

NS_ASSUME_NONNULL_BEGIN

/* A file URL for a path that must exist. A missing file is a configuration error
 * (VZErrorDomain code `code`) that wraps the file system's own error. */
static NSURL *_Nullable avz_existing_file_url(const char *_Nullable path, NSString *what,
                                              NSInteger code, NSError *_Nullable *_Nonnull error)
{
    NSURL *url = avz_path_url(path, what, code, error);
    if (url == nil) {
        return nil;
    }
    NSError *reachability = nil;
    if (![url checkResourceIsReachableAndReturnError:&reachability]) {
        *error = avz_error_with(code,
                                [NSString stringWithFormat:@"the %@ %@ does not exist or cannot "
                                                           @"be reached",
                                                           what, url.path],
                                reachability, url.path);
        return nil;
    }
    return url;
}

static uint32_t avz_clamp_u32(NSUInteger value)
{
    return value > UINT32_MAX ? UINT32_MAX : (uint32_t)value;
}

/* ================================================================================== */
/* avz_config: AVZConfiguration                                                       */
/* ================================================================================== */

@implementation AVZConfiguration {
    NSMutableArray<VZEntropyDeviceConfiguration *> *_entropyDevices;
    NSMutableArray<VZMemoryBalloonDeviceConfiguration *> *_memoryBalloonDevices;
    NSMutableArray<VZSocketDeviceConfiguration *> *_socketDevices;
    /* Element types newer than macOS 11/12: kept untyped here, typed where they are
     * added and assigned (behind @available). */
    NSMutableArray *_directorySharingDevices; /* VZDirectorySharingDeviceConfiguration, 12 */
    NSMutableArray *_consoleDevices;          /* VZConsoleDeviceConfiguration, 13 */
}

- (instancetype)init
{
    self = [super init];
    if (self != nil) {
        /* An exception leaves it nil: every later call then fails validation. */
        (void)avz_try(^{
            self->_configuration = [[VZVirtualMachineConfiguration alloc] init];
        });
        _storageDevices = [NSMutableArray array];
        _networkDevices = [NSMutableArray array];
        _serialPorts = [NSMutableArray array];
        _entropyDevices = [NSMutableArray array];
        _memoryBalloonDevices = [NSMutableArray array];
        _socketDevices = [NSMutableArray array];
        _directorySharingDevices = [NSMutableArray array];
        _consoleDevices = [NSMutableArray array];
    }
    return self;
}

- (void)addEntropyDevice:(VZEntropyDeviceConfiguration *)device
{
    [_entropyDevices addObject:device];
    _configuration.entropyDevices = [_entropyDevices copy];
}

- (void)addMemoryBalloonDevice:(VZMemoryBalloonDeviceConfiguration *)device
{
    [_memoryBalloonDevices addObject:device];
    _configuration.memoryBalloonDevices = [_memoryBalloonDevices copy];
}

- (void)addSocketDevice:(VZSocketDeviceConfiguration *)device
{
    [_socketDevices addObject:device];
    _configuration.socketDevices = [_socketDevices copy];
}

- (void)addDirectorySharingDevice:(VZDirectorySharingDeviceConfiguration *)device
{
    [_directorySharingDevices addObject:device];
    _configuration.directorySharingDevices = [_directorySharingDevices copy];
}

- (void)addConsoleDevice:(VZConsoleDeviceConfiguration *)device
{
    [_consoleDevices addObject:device];
    _configuration.consoleDevices = [_consoleDevices copy];
}

- (void)addStorageDevice:(VZStorageDeviceConfiguration *)device
{
    [_storageDevices addObject:device];
    _configuration.storageDevices = [_storageDevices copy];
}

- (void)addNetworkDevice:(VZNetworkDeviceConfiguration *)device
{
    [_networkDevices addObject:device];
    _configuration.networkDevices = [_networkDevices copy];
}

- (void)addSerialPort:(VZSerialPortConfiguration *)port
{
    [_serialPorts addObject:port];
    _configuration.serialPorts = [_serialPorts copy];
}

@end

/* Borrows the object behind an avz_config handle (+0). */
AVZConfiguration *_Nullable avz_config_object(avz_config *_Nullable config)
{
    return (__bridge AVZConfiguration *)(void *)config;
}

/* avz_run for a configuration function: an autorelease pool, a handle check, the
 * ABI's error convention. */
bool avz_config_run(avz_config *_Nullable config, CFErrorRef _Nullable *_Nullable error,
                    NSError *_Nullable (^__attribute__((noescape)) body)(AVZConfiguration *c))
{
    return avz_run(error, ^NSError *_Nullable {
        AVZConfiguration *c = avz_config_object(config);
        if (c == nil) {
            return avz_error(AVZ_ERROR_INTERNAL, @"no configuration (NULL avz_config handle)");
        }
        return body(c);
    });
}

NS_ASSUME_NONNULL_END

/* ================================================================================== */
/* Host                                                                               */
/* ================================================================================== */

bool avz_is_supported(void)
{
    __block BOOL supported = NO;
    @autoreleasepool {
        /* An exception: reported as "not supported". */
        (void)avz_try(^{
            supported = [VZVirtualMachine isSupported];
        });
    }
    return supported;
}

bool avz_save_restore_supported(void)
{
#if defined(__arm64__)
    if (@available(macOS 14, *)) {
        return true;
    }
#endif
    return false;
}

void avz_get_limits(avz_limits *out)
{
    if (out == NULL) {
        return;
    }
    /* Zero (no limit known) for whatever an exception leaves unread. */
    *out = (avz_limits){0};
    @autoreleasepool {
        (void)avz_try(^{
            out->min_cpu_count =
                avz_clamp_u32(VZVirtualMachineConfiguration.minimumAllowedCPUCount);
            out->max_cpu_count =
                avz_clamp_u32(VZVirtualMachineConfiguration.maximumAllowedCPUCount);
            out->min_memory_size = VZVirtualMachineConfiguration.minimumAllowedMemorySize;
            out->max_memory_size = VZVirtualMachineConfiguration.maximumAllowedMemorySize;
        });
    }
}

bool avz_machine_identifier_create(uint8_t *buffer, size_t capacity, size_t *length,
                                   CFErrorRef *error)
{
    return avz_run(error, ^NSError *_Nullable {
        if (@available(macOS 13, *)) {
            NSData *data = [[VZGenericMachineIdentifier alloc] init].dataRepresentation;
            size_t needed = (size_t)data.length;
            if (length != NULL) {
                *length = needed;
            }
            if (needed > capacity || (needed > 0 && buffer == NULL)) {
                return avz_error(AVZ_ERROR_INTERNAL,
                                 [NSString stringWithFormat:@"the machine identifier needs %zu "
                                                            @"bytes, the buffer has %zu",
                                                            needed, capacity]);
            }
            if (needed > 0) {
                [data getBytes:buffer length:needed];
            }
            return nil;
        }
        return avz_not_supported(@"A generic machine identifier", @"macOS 13");
    });
}

/* ================================================================================== */
/* Configuration                                                                      */
/* ================================================================================== */

avz_config *avz_config_create(void)
{
    @autoreleasepool {
        AVZConfiguration *config = [[AVZConfiguration alloc] init];
        return (__bridge_retained avz_config *)config;
    }
}

void avz_config_set_cpu_count(avz_config *config, uint32_t cpu_count)
{
    @autoreleasepool {
        /* An exception (never seen): the value is not set; validation reports it. */
        (void)avz_try(^{
            avz_config_object(config).configuration.CPUCount = cpu_count;
        });
    }
}

void avz_config_set_memory_size(avz_config *config, uint64_t memory_size)
{
    @autoreleasepool {
        (void)avz_try(^{
            avz_config_object(config).configuration.memorySize = memory_size;
        });
    }
}

bool avz_config_set_linux_boot_loader(avz_config *config, const char *kernel_path,
                                      const char *initrd_path, const char *command_line,
                                      CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        NSError *failure = nil;
        NSURL *kernel = avz_existing_file_url(kernel_path, @"kernel",
                                              AVZ_ERROR_INVALID_CONFIGURATION, &failure);
        if (kernel == nil) {
            return failure;
        }
        NSURL *initrd = nil;
        if (initrd_path != NULL) {
            initrd = avz_existing_file_url(initrd_path, @"initial RAM disk",
                                           AVZ_ERROR_INVALID_CONFIGURATION, &failure);
            if (initrd == nil) {
                return failure;
            }
        }
        NSString *commandLine = @"";
        if (command_line != NULL) {
            NSString *decoded = [NSString stringWithUTF8String:command_line];
            if (decoded == nil) {
                return avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                                 @"the kernel command line is not valid UTF-8");
            }
            commandLine = decoded;
        }
        VZLinuxBootLoader *loader = [[VZLinuxBootLoader alloc] initWithKernelURL:kernel];
        loader.commandLine = commandLine;
        loader.initialRamdiskURL = initrd;
        c.configuration.bootLoader = loader;
        return nil;
    });
}

bool avz_config_set_efi_boot_loader(avz_config *config, const char *variable_store_path,
                                    bool create, CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        if (@available(macOS 13, *)) {
            NSError *failure = nil;
            NSURL *url = avz_path_url(variable_store_path, @"EFI variable store",
                                      AVZ_ERROR_INVALID_CONFIGURATION, &failure);
            if (url == nil) {
                return failure;
            }
            VZEFIVariableStore *store = nil;
            if (create) {
                store = [[VZEFIVariableStore alloc]
                    initCreatingVariableStoreAtURL:url
                                           options:VZEFIVariableStoreInitializationOptionAllowOverwrite
                                             error:&failure];
                if (store == nil) {
                    return avz_or(failure, AVZ_ERROR_INTERNAL,
                                  [NSString stringWithFormat:@"cannot create the EFI variable "
                                                             @"store %@",
                                                             url.path]);
                }
            } else {
                /* -initWithURL: does not look at the file: report a missing one now, with
                 * the file system's own error. */
                if (![url checkResourceIsReachableAndReturnError:&failure]) {
                    return avz_or(failure, AVZ_ERROR_INVALID_CONFIGURATION,
                                  [NSString stringWithFormat:@"the EFI variable store %@ does "
                                                             @"not exist",
                                                             url.path]);
                }
                store = [[VZEFIVariableStore alloc] initWithURL:url];
            }
            VZEFIBootLoader *loader = [[VZEFIBootLoader alloc] init];
            loader.variableStore = store;
            c.configuration.bootLoader = loader;
            return nil;
        }
        return avz_not_supported(@"The EFI boot loader", @"macOS 13");
    });
}

bool avz_config_set_generic_platform(avz_config *config, const uint8_t *machine_identifier,
                                     size_t length, CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        if (@available(macOS 12, *)) {
            VZGenericPlatformConfiguration *platform = [[VZGenericPlatformConfiguration alloc] init];
            if (machine_identifier != NULL) {
                if (@available(macOS 13, *)) {
                    NSData *data = [NSData dataWithBytes:machine_identifier length:length];
                    VZGenericMachineIdentifier *identifier =
                        [[VZGenericMachineIdentifier alloc] initWithDataRepresentation:data];
                    if (identifier == nil) {
                        return avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                                         [NSString stringWithFormat:@"these %zu bytes are not "
                                                                    @"the data representation of "
                                                                    @"a machine identifier",
                                                                    length]);
                    }
                    platform.machineIdentifier = identifier;
                } else {
                    return avz_not_supported(@"A persistent machine identifier", @"macOS 13");
                }
            }
            c.configuration.platform = platform;
            return nil;
        }
        return avz_not_supported(@"The generic platform configuration", @"macOS 12");
    });
}

bool avz_config_validate(avz_config *config, CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        NSError *failure = nil;
        if ([c.configuration validateWithError:&failure]) {
            return nil;
        }
        return avz_or(failure, AVZ_ERROR_INVALID_CONFIGURATION,
                      @"the virtual machine configuration is not valid");
    });
}

bool avz_config_validate_save_restore(avz_config *config, CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
#if defined(__arm64__)
        if (@available(macOS 14, *)) {
            NSError *failure = nil;
            if ([c.configuration validateSaveRestoreSupportWithError:&failure]) {
                return nil;
            }
            return avz_or(failure, AVZ_ERROR_INVALID_CONFIGURATION,
                          @"this configuration does not support saving and restoring");
        }
        return avz_not_supported(@"Saving and restoring a virtual machine", @"macOS 14");
#else
        (void)c;
        return avz_not_supported(@"Saving and restoring a virtual machine",
                                 @"Apple silicon and macOS 14");
#endif
    });
}
