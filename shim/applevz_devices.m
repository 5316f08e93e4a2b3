/*
 * shim/applevz_devices.m — the devices an avz_config holds: storage, network, entropy,
 * memory balloon, socket (vsock), directory sharing (virtio-fs, Rosetta), console ports
 * and serial ports.
 *
 * Part of the macOS shim (shim/applevz*.m, ARC Objective-C): see shim/applevz.m for the
 * design and shim/applevz_internal.h for what each file provides.
 */

#include "applevz_internal.h"

NS_ASSUME_NONNULL_BEGIN

/* A borrowed NUL-terminated UTF-8 string. NULL or invalid UTF-8: nil and a VZErrorDomain
 * error with code `code` naming `what`. */
static NSString *_Nullable avz_string(const char *_Nullable text, NSString *what, NSInteger code,
                                      NSError *_Nullable *_Nonnull error)
{
    NSString *string = text != NULL ? [NSString stringWithUTF8String:text] : nil;
    if (string == nil) {
        *error = avz_error(code, [NSString stringWithFormat:@"the %@ is missing or not valid UTF-8",
                                                            what]);
    }
    return string;
}

/* A duplicate of `fd` (borrowed) as a file handle that closes the duplicate when it is
 * deallocated; `purpose` ("reading from the serial port") names it in errors.
 * fd == -1 means "this direction is not used": nil without an error. */
static NSFileHandle *_Nullable avz_duplicate_handle(int fd, NSString *purpose,
                                                   NSError *_Nullable *_Nonnull error)
{
    if (fd == -1) {
        return nil;
    }
    int duplicate = fd < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (duplicate < 0) {
        int code = fd < 0 ? EBADF : errno;
        *error = avz_posix_error(code, [NSString stringWithFormat:@"cannot use descriptor %d for "
                                                                  @"%@: %s",
                                                                  fd, purpose, strerror(code)]);
        return nil;
    }
    return [[NSFileHandle alloc] initWithFileDescriptor:duplicate closeOnDealloc:YES];
}

/* A VZMACAddress from "xx:xx:xx:xx:xx:xx" (borrowed), or a random locally administered
 * one for NULL. A bad address is a configuration error (code 2). */
static VZMACAddress *_Nullable avz_mac_address(const char *_Nullable mac_address,
                                               NSError *_Nullable *_Nonnull error)
{
    if (mac_address == NULL) {
        return [VZMACAddress randomLocallyAdministeredAddress];
    }
    NSString *string = [NSString stringWithUTF8String:mac_address];
    VZMACAddress *address = string != nil ? [[VZMACAddress alloc] initWithString:string] : nil;
    if (address == nil) {
        *error = avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                           [NSString stringWithFormat:@"\"%s\" is not a MAC address (expected "
                                                      @"xx:xx:xx:xx:xx:xx)",
                                                      mac_address]);
    }
    return address;
}

/* A VZDiskImageStorageDeviceAttachment for a disk image at `path` (borrowed). Modes other
 * than automatic caching and full synchronization need macOS 12. */
static VZDiskImageStorageDeviceAttachment *_Nullable avz_disk_attachment(
    const char *_Nullable path, bool read_only, int32_t caching_mode, int32_t sync_mode,
    NSError *_Nullable *_Nonnull error)
{
    if (caching_mode < AVZ_CACHING_AUTOMATIC || caching_mode > AVZ_CACHING_CACHED) {
        *error = avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                           [NSString stringWithFormat:@"unknown disk caching mode %d", caching_mode]);
        return nil;
    }
    if (sync_mode < AVZ_SYNC_FULL || sync_mode > AVZ_SYNC_NONE) {
        *error = avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                           [NSString stringWithFormat:@"unknown disk synchronization mode %d",
                                                      sync_mode]);
        return nil;
    }
    NSError *failure = nil;
    NSURL *url = avz_path_url(path, @"disk image", AVZ_ERROR_INVALID_CONFIGURATION, &failure);
    if (url == nil) {
        *error = (NSError *_Nonnull)failure;
        return nil;
    }
    VZDiskImageStorageDeviceAttachment *attachment = nil;
    if (@available(macOS 12, *)) {
        attachment = [[VZDiskImageStorageDeviceAttachment alloc]
                    initWithURL:url
                       readOnly:read_only
                    cachingMode:(VZDiskImageCachingMode)caching_mode
            synchronizationMode:(VZDiskImageSynchronizationMode)sync_mode
                          error:&failure];
    } else {
        if (caching_mode != AVZ_CACHING_AUTOMATIC || sync_mode != AVZ_SYNC_FULL) {
            *error = avz_not_supported(@"A disk caching or synchronization mode other than "
                                       @"automatic/full",
                                       @"macOS 12");
            return nil;
        }
        attachment = [[VZDiskImageStorageDeviceAttachment alloc] initWithURL:url
                                                                    readOnly:read_only
                                                                       error:&failure];
    }
    if (attachment == nil) {
        *error = avz_or(failure, AVZ_ERROR_INVALID_DISK_IMAGE,
                        [NSString stringWithFormat:@"cannot attach the disk image %@", url.path]);
    }
    return attachment;
}

/* A virtio-fs tag (borrowed) checked with +[VZVirtioFileSystemDeviceConfiguration
 * validateTag:error:]; an invalid one is a configuration error (code 2). */
static NSString *_Nullable avz_share_tag(const char *_Nullable tag,
                                         NSError *_Nullable *_Nonnull error)
    API_AVAILABLE(macos(12.0))
{
    NSString *string = avz_string(tag, @"directory share tag", AVZ_ERROR_INVALID_CONFIGURATION,
                                  error);
    if (string == nil) {
        return nil;
    }
    NSError *invalid = nil;
    if (![VZVirtioFileSystemDeviceConfiguration validateTag:string error:&invalid]) {
        *error = avz_as_code(invalid, AVZ_ERROR_INVALID_CONFIGURATION,
                             [NSString stringWithFormat:@"the directory share tag \"%@\" is not "
                                                        @"valid",
                                                        string]);
        return nil;
    }
    return string;
}

/* A VZSharedDirectory for `path` (borrowed), which must be an existing directory
 * (following symbolic links). Otherwise a file-system error (NSPOSIXErrorDomain): the
 * framework itself would only complain when the VM starts. */
static VZSharedDirectory *_Nullable avz_shared_directory(const char *_Nullable path,
                                                         bool read_only,
                                                         NSError *_Nullable *_Nonnull error)
    API_AVAILABLE(macos(12.0))
{
    NSString *string = path != NULL ? [NSString stringWithUTF8String:path] : nil;
    if (string == nil || string.length == 0) {
        *error = avz_posix_error(ENOENT, @"cannot share a directory: the path is missing, empty "
                                         @"or not valid UTF-8");
        return nil;
    }
    if (access(path, F_OK) != 0) {
        int code = errno;
        *error = avz_posix_error(code, [NSString stringWithFormat:@"cannot share the directory "
                                                                  @"%@: %s",
                                                                  string, strerror(code)]);
        return nil;
    }
    BOOL isDirectory = NO;
    if (![NSFileManager.defaultManager fileExistsAtPath:string isDirectory:&isDirectory] ||
        !isDirectory) {
        *error = avz_posix_error(ENOTDIR, [NSString stringWithFormat:@"cannot share the directory "
                                                                     @"%@: it is not a directory",
                                                                     string]);
        return nil;
    }
    return [[VZSharedDirectory alloc] initWithURL:[NSURL fileURLWithPath:string isDirectory:YES]
                                         readOnly:read_only];
}

NS_ASSUME_NONNULL_END

/* ================================================================================== */
/* Configuration: devices                                                             */
/* ================================================================================== */

bool avz_config_add_storage_device(avz_config *config, int32_t interface, const char *path,
                                   bool read_only, int32_t caching_mode, int32_t sync_mode,
                                   const char *block_device_identifier, CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        if (interface != AVZ_STORAGE_VIRTIO_BLOCK && interface != AVZ_STORAGE_NVME) {
            return avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                             [NSString stringWithFormat:@"storage interface %d is not virtio "
                                                        @"block (0) or NVMe (1)",
                                                        interface]);
        }
        if (interface == AVZ_STORAGE_NVME) {
            if (@available(macOS 14, *)) {
            } else {
                return avz_not_supported(@"An NVMe storage device", @"macOS 14");
            }
        }
        NSError *failure = nil;
        /* The identifier names a virtio block device; NVMe has none and ignores it. */
        NSString *identifier = nil;
        if (interface == AVZ_STORAGE_VIRTIO_BLOCK && block_device_identifier != NULL) {
            if (@available(macOS 12.3, *)) {
                identifier = avz_string(block_device_identifier, @"block device identifier",
                                        AVZ_ERROR_INVALID_CONFIGURATION, &failure);
                if (identifier == nil) {
                    return failure;
                }
                NSError *invalid = nil;
                if (![VZVirtioBlockDeviceConfiguration validateBlockDeviceIdentifier:identifier
                                                                               error:&invalid]) {
                    return avz_as_code(invalid, AVZ_ERROR_INVALID_CONFIGURATION,
                                       [NSString stringWithFormat:@"the block device identifier "
                                                                  @"\"%@\" is not valid (at "
                                                                  @"most 20 ASCII bytes)",
                                                                  identifier]);
                }
            } else {
                return avz_not_supported(@"A block device identifier", @"macOS 12.3");
            }
        }
        VZDiskImageStorageDeviceAttachment *attachment =
            avz_disk_attachment(path, read_only, caching_mode, sync_mode, &failure);
        if (attachment == nil) {
            return failure;
        }
        if (interface == AVZ_STORAGE_NVME) {
            if (@available(macOS 14, *)) {
                [c addStorageDevice:[[VZNVMExpressControllerDeviceConfiguration alloc]
                                        initWithAttachment:attachment]];
                return nil;
            }
            return avz_not_supported(@"An NVMe storage device", @"macOS 14");
        }
        VZVirtioBlockDeviceConfiguration *device =
            [[VZVirtioBlockDeviceConfiguration alloc] initWithAttachment:attachment];
        if (identifier != nil) {
            if (@available(macOS 12.3, *)) {
                device.blockDeviceIdentifier = identifier;
            }
        }
        [c addStorageDevice:device];
        return nil;
    });
}

bool avz_config_add_nat_network_device(avz_config *config, const char *mac_address,
                                       CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        NSError *failure = nil;
        VZMACAddress *address = avz_mac_address(mac_address, &failure);
        if (address == nil) {
            return failure;
        }
        VZVirtioNetworkDeviceConfiguration *device = [[VZVirtioNetworkDeviceConfiguration alloc] init];
        device.MACAddress = address;
        device.attachment = [[VZNATNetworkDeviceAttachment alloc] init];
        [c addNetworkDevice:device];
        return nil;
    });
}

/* The framework's MTU range for a file-handle attachment (its default is the minimum). */
#define AVZ_MTU_MIN 1500u
#define AVZ_MTU_MAX 65535u

bool avz_config_add_file_handle_network_device(avz_config *config, int socket_fd,
                                               const char *mac_address, uint32_t mtu,
                                               CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        /* The framework wants a connected datagram socket and would only find out later
         * (or raise): check the descriptor now, as the simulator does. */
        int type = 0;
        socklen_t size = sizeof type;
        if (socket_fd < 0 || getsockopt(socket_fd, SOL_SOCKET, SO_TYPE, &type, &size) != 0) {
            int code = socket_fd < 0 ? EBADF : errno;
            return avz_posix_error(code, [NSString stringWithFormat:@"cannot use descriptor %d "
                                                                    @"for a network device: %s",
                                                                    socket_fd, strerror(code)]);
        }
        if (type != SOCK_DGRAM) {
            return avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                             [NSString stringWithFormat:@"descriptor %d is not a datagram socket "
                                                        @"(a file-handle network attachment "
                                                        @"needs a connected SOCK_DGRAM socket)",
                                                        socket_fd]);
        }
        NSError *failure = nil;
        VZMACAddress *address = avz_mac_address(mac_address, &failure);
        if (address == nil) {
            return failure;
        }
        if (mtu != 0) {
            if (@available(macOS 13, *)) {
                if (mtu < AVZ_MTU_MIN || mtu > AVZ_MTU_MAX) {
                    return avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                                     [NSString stringWithFormat:@"an MTU of %u is outside "
                                                                @"%u...%u",
                                                                mtu, AVZ_MTU_MIN, AVZ_MTU_MAX]);
                }
            } else {
                return avz_not_supported(@"Setting a network device's MTU", @"macOS 13");
            }
        }
        /* The attachment's handle owns a duplicate: the caller keeps its descriptor. The
         * duplicate is the same socket, so its buffer sizes are the caller's: Apple asks
         * for SO_RCVBUF at least twice SO_SNDBUF (four times for best throughput), and
         * the shim leaves both as the caller set them (include/applevz.h). */
        NSFileHandle *handle = avz_duplicate_handle(socket_fd, @"a network device", &failure);
        if (handle == nil) {
            return failure;
        }
        VZFileHandleNetworkDeviceAttachment *attachment =
            [[VZFileHandleNetworkDeviceAttachment alloc] initWithFileHandle:handle];
        if (mtu != 0) {
            if (@available(macOS 13, *)) {
                attachment.maximumTransmissionUnit = (NSInteger)mtu;
            }
        }
        VZVirtioNetworkDeviceConfiguration *device = [[VZVirtioNetworkDeviceConfiguration alloc] init];
        device.MACAddress = address;
        device.attachment = attachment;
        [c addNetworkDevice:device];
        return nil;
    });
}

bool avz_config_add_entropy_device(avz_config *config, CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        [c addEntropyDevice:[[VZVirtioEntropyDeviceConfiguration alloc] init]];
        return nil;
    });
}

bool avz_config_add_memory_balloon_device(avz_config *config, CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        [c addMemoryBalloonDevice:[[VZVirtioTraditionalMemoryBalloonDeviceConfiguration alloc] init]];
        return nil;
    });
}

bool avz_config_add_socket_device(avz_config *config, CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        [c addSocketDevice:[[VZVirtioSocketDeviceConfiguration alloc] init]];
        return nil;
    });
}

bool avz_validate_directory_share_tag(const char *tag, CFErrorRef *error)
{
    return avz_run(error, ^NSError *_Nullable {
        if (@available(macOS 12, *)) {
            NSError *failure = nil;
            return avz_share_tag(tag, &failure) != nil ? nil : failure;
        }
        return avz_not_supported(@"Directory sharing (virtio-fs)", @"macOS 12");
    });
}

bool avz_config_add_directory_share(avz_config *config, const char *tag,
                                    const char *const *names, const char *const *paths,
                                    const bool *read_only, size_t count, CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        if (@available(macOS 12, *)) {
            NSError *failure = nil;
            NSString *tagString = avz_share_tag(tag, &failure);
            if (tagString == nil) {
                return failure;
            }
            if (count == 0) {
                return avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                                 [NSString stringWithFormat:@"the directory share \"%@\" shares "
                                                            @"no directory",
                                                            tagString]);
            }
            if (names == NULL && count != 1) {
                return avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                                 [NSString stringWithFormat:@"the directory share \"%@\" shares "
                                                            @"%zu directories without names "
                                                            @"(only a single directory can go "
                                                            @"without a name)",
                                                            tagString, count]);
            }
            if (paths == NULL || read_only == NULL) {
                return avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                                 [NSString stringWithFormat:@"the directory share \"%@\" has no "
                                                            @"paths or no read-only flags",
                                                            tagString]);
            }
            /* Names first (a name error is a configuration error whatever the paths),
             * with the framework's own rules: -initWithDirectories: raises on a bad one. */
            NSMutableArray<NSString *> *directoryNames = [NSMutableArray array];
            if (names != NULL) {
                for (size_t i = 0; i < count; i++) {
                    NSString *name = avz_string(names[i], @"directory name",
                                                AVZ_ERROR_INVALID_CONFIGURATION, &failure);
                    if (name == nil) {
                        return failure;
                    }
                    NSError *invalid = nil;
                    if (![VZMultipleDirectoryShare validateName:name error:&invalid]) {
                        return avz_as_code(invalid, AVZ_ERROR_INVALID_CONFIGURATION,
                                           [NSString stringWithFormat:@"in the directory share "
                                                                      @"\"%@\", \"%@\" is not a "
                                                                      @"valid directory name",
                                                                      tagString, name]);
                    }
                    for (NSUInteger j = 0; j < directoryNames.count; j++) {
                        if ([directoryNames[j] isEqualToString:name]) {
                            return avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                                             [NSString stringWithFormat:@"in the directory share "
                                                                        @"\"%@\", the name "
                                                                        @"\"%@\" is used twice",
                                                                        tagString, name]);
                        }
                    }
                    [directoryNames addObject:name];
                }
            }
            NSMutableArray<VZSharedDirectory *> *directories = [NSMutableArray array];
            for (size_t i = 0; i < count; i++) {
                VZSharedDirectory *directory =
                    avz_shared_directory(paths[i], read_only[i], &failure);
                if (directory == nil) {
                    return failure;
                }
                [directories addObject:directory];
            }
            VZDirectoryShare *share = nil;
            if (names == NULL) {
                share = [[VZSingleDirectoryShare alloc] initWithDirectory:directories[0]];
            } else {
                NSMutableDictionary<NSString *, VZSharedDirectory *> *byName =
                    [NSMutableDictionary dictionary];
                for (NSUInteger i = 0; i < directories.count; i++) {
                    byName[directoryNames[i]] = directories[i];
                }
                share = [[VZMultipleDirectoryShare alloc] initWithDirectories:byName];
            }
            VZVirtioFileSystemDeviceConfiguration *device =
                [[VZVirtioFileSystemDeviceConfiguration alloc] initWithTag:tagString];
            device.share = share;
            [c addDirectorySharingDevice:device];
            return nil;
        }
        return avz_not_supported(@"Directory sharing (virtio-fs)", @"macOS 12");
    });
}

int32_t avz_rosetta_availability(void)
{
#if defined(__arm64__)
    if (@available(macOS 13, *)) {
        @autoreleasepool {
            @try {
                switch (VZLinuxRosettaDirectoryShare.availability) {
                case VZLinuxRosettaAvailabilityInstalled:
                    return AVZ_ROSETTA_INSTALLED;
                case VZLinuxRosettaAvailabilityNotInstalled:
                    return AVZ_ROSETTA_NOT_INSTALLED;
                case VZLinuxRosettaAvailabilityNotSupported:
                    break;
                }
            } @catch (NSException *exception) {
                (void)exception; /* treated as "not supported" */
            }
        }
    }
#endif
    /* Intel Macs, macOS before 13, and values this file does not know. */
    return AVZ_ROSETTA_NOT_SUPPORTED;
}

bool avz_config_add_rosetta_share(avz_config *config, const char *tag, CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
#if defined(__arm64__)
        if (@available(macOS 13, *)) {
            NSError *failure = nil;
            NSString *tagString = avz_share_tag(tag, &failure);
            if (tagString == nil) {
                return failure;
            }
            VZLinuxRosettaAvailability availability = VZLinuxRosettaDirectoryShare.availability;
            if (availability == VZLinuxRosettaAvailabilityNotSupported) {
                return avz_not_supported(@"Rosetta for Linux",
                                         @"a host system that provides Rosetta for Linux");
            }
            /* Not installed: the framework's own error (the ABI passes it through). */
            VZLinuxRosettaDirectoryShare *share =
                [[VZLinuxRosettaDirectoryShare alloc] initWithError:&failure];
            if (share == nil) {
                return avz_or(failure, AVZ_ERROR_NOT_SUPPORTED,
                              availability == VZLinuxRosettaAvailabilityNotInstalled
                                  ? @"Rosetta for Linux is not installed (softwareupdate "
                                    @"--install-rosetta)"
                                  : @"cannot share Rosetta for Linux");
            }
            VZVirtioFileSystemDeviceConfiguration *device =
                [[VZVirtioFileSystemDeviceConfiguration alloc] initWithTag:tagString];
            device.share = share;
            [c addDirectorySharingDevice:device];
            return nil;
        }
        return avz_not_supported(@"Rosetta for Linux", @"macOS 13");
#else
        (void)c;
        (void)tag;
        return avz_not_supported(@"Rosetta for Linux", @"Apple silicon and macOS 13");
#endif
    });
}

bool avz_config_add_console_port(avz_config *config, const char *name, bool is_console,
                                 int read_fd, int write_fd, CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        if (@available(macOS 13, *)) {
            NSError *failure = nil;
            NSString *portName = avz_string(name, @"console port name",
                                            AVZ_ERROR_INVALID_CONFIGURATION, &failure);
            if (portName == nil) {
                return failure;
            }
            if (portName.length == 0) {
                return avz_error(AVZ_ERROR_INVALID_CONFIGURATION, @"a console port needs a name");
            }
            /* Duplicates, as for avz_config_add_serial_port_fds. */
            NSFileHandle *reading =
                avz_duplicate_handle(read_fd, @"reading from the console port", &failure);
            if (reading == nil && failure != nil) {
                return failure;
            }
            NSFileHandle *writing =
                avz_duplicate_handle(write_fd, @"writing to the console port", &failure);
            if (writing == nil && failure != nil) {
                return failure; /* `reading` closes its duplicate as it goes away */
            }
            VZVirtioConsolePortConfiguration *port = [[VZVirtioConsolePortConfiguration alloc] init];
            port.name = portName;
            port.isConsole = is_console;
            port.attachment =
                [[VZFileHandleSerialPortAttachment alloc] initWithFileHandleForReading:reading
                                                                  fileHandleForWriting:writing];
            VZVirtioConsoleDeviceConfiguration *device =
                [[VZVirtioConsoleDeviceConfiguration alloc] init];
            device.ports[0] = port;
            [c addConsoleDevice:device];
            return nil;
        }
        return avz_not_supported(@"A named console port (VZVirtioConsoleDeviceConfiguration)",
                                 @"macOS 13");
    });
}

bool avz_config_add_serial_port_file(avz_config *config, const char *path, bool append,
                                     CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        NSError *failure = nil;
        NSURL *url = avz_path_url(path, @"serial port log", AVZ_ERROR_INVALID_CONFIGURATION,
                                  &failure);
        if (url == nil) {
            return failure;
        }
        /* The guest's output (the port's write direction) goes to the file; `append`
         * keeps what is already there instead of truncating it. */
        VZFileSerialPortAttachment *attachment =
            [[VZFileSerialPortAttachment alloc] initWithURL:url append:append error:&failure];
        if (attachment == nil) {
            return avz_or(failure, AVZ_ERROR_INVALID_CONFIGURATION,
                          [NSString stringWithFormat:@"cannot open the serial port log %@",
                                                     url.path]);
        }
        VZVirtioConsoleDeviceSerialPortConfiguration *port =
            [[VZVirtioConsoleDeviceSerialPortConfiguration alloc] init];
        port.attachment = attachment;
        [c addSerialPort:port];
        return nil;
    });
}

bool avz_config_add_serial_port_fds(avz_config *config, int read_fd, int write_fd,
                                    CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        /* The shim owns duplicates: the caller may close its descriptors at once. The
         * handles close them when the attachment (shared by this configuration and
         * every VM made from it) goes away. */
        NSError *failure = nil;
        NSFileHandle *reading = avz_duplicate_handle(read_fd, @"reading from the serial port", &failure);
        if (reading == nil && failure != nil) {
            return failure;
        }
        NSFileHandle *writing = avz_duplicate_handle(write_fd, @"writing to the serial port", &failure);
        if (writing == nil && failure != nil) {
            return failure; /* `reading` closes its duplicate as it goes away */
        }
        VZFileHandleSerialPortAttachment *attachment =
            [[VZFileHandleSerialPortAttachment alloc] initWithFileHandleForReading:reading
                                                              fileHandleForWriting:writing];
        VZVirtioConsoleDeviceSerialPortConfiguration *port =
            [[VZVirtioConsoleDeviceSerialPortConfiguration alloc] init];
        port.attachment = attachment;
        [c addSerialPort:port];
        return nil;
    });
}
