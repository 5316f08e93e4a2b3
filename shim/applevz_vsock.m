/*
 * shim/applevz_vsock.m — virtio-vsock at run time: host listeners (AVZListener) and
 * connections to guest ports.
 *
 * Part of the macOS shim (shim/applevz*.m, ARC Objective-C): see shim/applevz.m for the
 * design and shim/applevz_internal.h for what each file provides.
 */

#include "applevz_internal.h"

NS_ASSUME_NONNULL_BEGIN

@implementation AVZListener {
    dispatch_queue_t _queue;
    avz_accept_fn _Nullable _accept; /* NULL once released */
    void *_Nullable _context;
    avz_context_release_fn _Nullable _release;
    BOOL _released; /* queue only */
}

- (instancetype)initWithQueue:(dispatch_queue_t)queue
                       accept:(avz_accept_fn)accept
                      context:(nullable void *)context
                      release:(nullable avz_context_release_fn)release
{
    self = [super init];
    if (self != nil) {
        _queue = queue;
        _accept = accept;
        _context = context;
        _release = release;
        _socketListener = [[VZVirtioSocketListener alloc] init];
        _socketListener.delegate = self;
    }
    return self;
}

- (void)releaseContext
{
    if (_released) {
        return;
    }
    _released = YES;
    avz_context_release_fn release = _release;
    _release = NULL;
    _accept = NULL;
    if (release != NULL) {
        release(_context);
    }
}

/* On the queue: hands `fd` to the accept function, or closes it once released. */
- (void)deliverDescriptor:(int)fd guestPort:(uint32_t)guestPort hostPort:(uint32_t)hostPort
{
    avz_accept_fn accept = _accept;
    if (_released || accept == NULL) {
        close(fd);
        return;
    }
    accept(_context, fd, guestPort, hostPort);
}

/* The framework asks whether to accept a guest connection (documented to be called on
 * the VM's queue; forwarded there otherwise). The connection object owns its descriptor
 * and closes it when it goes: the callee gets a duplicate, then the object is closed. */
- (BOOL)listener:(VZVirtioSocketListener *)listener
    shouldAcceptNewConnection:(VZVirtioSocketConnection *)connection
             fromSocketDevice:(VZVirtioSocketDevice *)socketDevice
{
    (void)listener;
    (void)socketDevice;
    BOOL onQueue = avz_is_on_queue(_queue);
    if (onQueue && _released) {
        return NO; /* removed or replaced: refuse rather than accept and drop */
    }
    int fd = fcntl(connection.fileDescriptor, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
        return NO;
    }
    uint32_t guestPort = connection.sourcePort;
    uint32_t hostPort = connection.destinationPort;
    if (onQueue) {
        [self deliverDescriptor:fd guestPort:guestPort hostPort:hostPort];
    } else {
        dispatch_async(_queue, ^{
            @autoreleasepool {
                [self deliverDescriptor:fd guestPort:guestPort hostPort:hostPort];
            }
        });
    }
    [connection close];
    return YES;
}

@end

/* The delivery of an avz_connect_fn: a connected descriptor (owned by the callee) and no
 * error, or -1 and a +1 error. */
static AVZDeliverBlock avz_connect_delivery(avz_connect_fn _Nullable function,
                                            void *_Nullable context)
{
    return ^(NSError *_Nullable error, int descriptor) {
        NSError *failure = error;
        if (failure == nil && descriptor < 0) {
            failure = avz_error(AVZ_ERROR_INTERNAL, @"the vsock connection failed without an "
                                                    @"error from the framework");
        }
        if (failure != nil && descriptor >= 0) {
            close(descriptor);
            descriptor = -1;
        }
        if (function == NULL) {
            if (descriptor >= 0) {
                close(descriptor);
            }
            return;
        }
        function(context, descriptor, failure != nil ? (__bridge_retained CFErrorRef)failure : NULL);
    };
}

/* On the queue: the VM's virtio socket device, or nil (and *error, code 2) without one. */
static VZVirtioSocketDevice *_Nullable avz_socket_device(VZVirtualMachine *virtualMachine,
                                                         NSString *what, uint32_t port,
                                                         NSError *_Nullable *_Nonnull error)
{
    NSArray<VZSocketDevice *> *devices = virtualMachine.socketDevices;
    for (NSUInteger i = 0; i < devices.count; i++) {
        if ([devices[i] isKindOfClass:[VZVirtioSocketDevice class]]) {
            return (VZVirtioSocketDevice *)devices[i];
        }
    }
    *error = avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                       [NSString stringWithFormat:@"Cannot %@ vsock port %u: the virtual machine "
                                                  @"has no socket device",
                                                  what, port]);
    return nil;
}

/* On the queue: releases a listener taken out of the table. Called from a callback (the
 * caller was already on the queue before the synchronous hop) the release waits for a
 * work item of its own, so that it never runs inside that listener's own accept call. */
static void avz_release_listener(AVZMachine *machine, AVZListener *_Nullable listener,
                                 BOOL callerOnQueue)
{
    if (listener == nil) {
        return;
    }
    if (callerOnQueue) {
        [machine asyncOnQueue:^{
            [listener releaseContext];
        }];
    } else {
        [listener releaseContext];
    }
}

NS_ASSUME_NONNULL_END

/* ================================================================================== */
/* Runtime devices: vsock                                                             */
/* ================================================================================== */

void avz_vm_vsock_connect(avz_vm *vm, uint32_t port, avz_connect_fn completion, void *context)
{
    @autoreleasepool {
        AVZMachine *machine = avz_machine(vm);
        if (machine == nil) {
            /* No queue to complete on: a programming error, reported inline (documented
             * in include/applevz.h). */
            if (completion != NULL) {
                NSError *error = avz_error(AVZ_ERROR_INTERNAL, @"no virtual machine (NULL avz_vm)");
                completion(context, -1, (__bridge_retained CFErrorRef)error);
            }
            return;
        }
        /* Exactly once, on the queue, through the same machinery as start/stop/...; the
         * completion keeps the machine alive until it ran. A connection changes no state:
         * its completion waits for nothing but the deliveries ahead of it. */
        AVZCompletion *pending =
            [[AVZCompletion alloc] initWithMachine:machine
                                      successState:AVZ_NO_STATE
                                           deliver:avz_connect_delivery(completion, context)];
        [machine asyncOnQueue:^{
            @try {
                VZVirtualMachine *virtualMachine = machine.vm;
                NSError *failure = nil;
                VZVirtioSocketDevice *device =
                    avz_socket_device(virtualMachine, @"connect to", port, &failure);
                if (device == nil) {
                    [pending completeWithError:failure];
                    return;
                }
                NSInteger state = virtualMachine.state;
                if (state != AVZ_STATE_RUNNING) {
                    NSString *why = [NSString stringWithFormat:@"Cannot connect to vsock port %u: "
                                                               @"the virtual machine is %@, not "
                                                               @"running",
                                                               port, avz_state_name(state)];
                    [pending completeWithError:avz_error(AVZ_ERROR_INVALID_STATE, why)];
                    return;
                }
                [device connectToPort:port
                    completionHandler:^(VZVirtioSocketConnection *_Nullable connection,
                                        NSError *_Nullable frameworkError) {
                        if (connection == nil) {
                            [pending completeWithError:avz_or(frameworkError, AVZ_ERROR_INTERNAL,
                                                              [NSString stringWithFormat:
                                                                            @"cannot connect to "
                                                                            @"vsock port %u",
                                                                            port])];
                            return;
                        }
                        /* The connection object closes its descriptor when it goes: the
                         * callee gets a duplicate, then the object is closed. A framework
                         * exception here (in its callout) stops in this handler. */
                        __block int fd = -1;
                        __block int code = 0;
                        if (!avz_try(^{
                                fd = fcntl(connection.fileDescriptor, F_DUPFD_CLOEXEC, 0);
                                code = fd < 0 ? errno : 0;
                                [connection close];
                            })) {
                            if (fd >= 0) {
                                close(fd);
                            }
                            [pending completeWithError:
                                         avz_error(AVZ_ERROR_INTERNAL,
                                                   [NSString stringWithFormat:
                                                                 @"cannot use the connection to "
                                                                 @"vsock port %u: the framework "
                                                                 @"raised an exception",
                                                                 port])];
                            return;
                        }
                        if (fd < 0) {
                            [pending completeWithError:
                                         avz_posix_error(code,
                                                         [NSString stringWithFormat:
                                                                       @"cannot use the connection "
                                                                       @"to vsock port %u: %s",
                                                                       port, strerror(code)])];
                            return;
                        }
                        [pending completeWithError:nil descriptor:fd];
                    }];
            } @catch (NSException *exception) {
                [pending refuseWithError:avz_exception_error(exception, @"vsock connect")];
            }
        }];
    }
}

bool avz_vm_vsock_listen(avz_vm *vm, uint32_t port, avz_accept_fn accept, void *context,
                         avz_context_release_fn release, CFErrorRef *error)
{
    AVZMachine *machine = avz_machine(vm);
    if (machine == nil || accept == NULL) {
        /* Never installed: the context is released before returning false. */
        if (release != NULL) {
            release(context);
        }
        return avz_run(error, ^NSError *_Nullable {
            return avz_error(AVZ_ERROR_INTERNAL, machine == nil
                                                     ? @"no virtual machine (NULL avz_vm)"
                                                     : @"no accept function (NULL avz_accept_fn)");
        });
    }
    BOOL callerOnQueue = [machine isOnQueue];
    return avz_vm_sync(vm, error, @"vsock listen",
                       ^NSError *_Nullable(AVZMachine *m, VZVirtualMachine *virtualMachine) {
                           AVZListener *listener = nil; /* owns the context once made */
                           NSError *failure = nil;
                           @try {
                               VZVirtioSocketDevice *device = avz_socket_device(
                                   virtualMachine, @"listen on", port, &failure);
                               if (device != nil) {
                                   listener = [[AVZListener alloc] initWithQueue:m.queue
                                                                          accept:accept
                                                                         context:context
                                                                         release:release];
                                   [device setSocketListener:listener.socketListener
                                                     forPort:port];
                                   /* The framework replaced any listener on this port: so
                                    * does the table; the one replaced is released once. */
                                   avz_release_listener(
                                       m, [m exchangeListener:listener forPort:port],
                                       callerOnQueue);
                                   return nil;
                               }
                           } @catch (NSException *exception) {
                               failure = avz_exception_error(exception, @"vsock listen");
                           }
                           /* Not installed: the context is released before this function
                            * returns false (by the listener once it holds it). */
                           if (listener != nil) {
                               [listener releaseContext];
                           } else if (release != NULL) {
                               release(context);
                           }
                           return failure;
                       });
}

bool avz_vm_vsock_remove_listener(avz_vm *vm, uint32_t port, CFErrorRef *error)
{
    AVZMachine *machine = avz_machine(vm);
    BOOL callerOnQueue = machine != nil && [machine isOnQueue];
    return avz_vm_sync(vm, error, @"vsock remove listener",
                       ^NSError *_Nullable(AVZMachine *m, VZVirtualMachine *virtualMachine) {
                           NSError *failure = nil;
                           VZVirtioSocketDevice *device = avz_socket_device(
                               virtualMachine, @"stop listening on", port, &failure);
                           if (device == nil) {
                               return failure;
                           }
                           /* Nothing listening on `port` is not an error (nor for the
                            * framework). */
                           [device removeSocketListenerForPort:port];
                           avz_release_listener(m, [m exchangeListener:nil forPort:port],
                                                callerOnQueue);
                           return nil;
                       });
}
