/*
 * shim/applevz_machine.m — avz_vm's machinery: AVZMachine (the queue, the
 * VZVirtualMachine, its delegate and key-value observation, the observer and the order
 * of events), AVZCompletion (an operation's completion, exactly once) and the helpers
 * the ABI functions go through (avz_vm_async, avz_vm_sync, avz_vm_read_bool).
 *
 * Part of the macOS shim (shim/applevz*.m, ARC Objective-C): see shim/applevz.m for the
 * design (QUEUE AFFINITY DISCIPLINE, ORDER OF EVENTS) and shim/applevz_internal.h for
 * what each file provides.
 */

#include "applevz_internal.h"

NS_ASSUME_NONNULL_BEGIN

/* Queue-specific key (its address) and key-value-observing context (its address). */
static char kAVZQueueKey;
static char kAVZStateObservation;

BOOL avz_is_on_queue(dispatch_queue_t queue)
{
    return dispatch_get_specific(&kAVZQueueKey) == (__bridge void *)queue;
}

/* The states that last only while an operation is under way. */
static BOOL avz_state_is_transitional(NSInteger state)
{
    switch (state) {
    case AVZ_STATE_STARTING:
    case AVZ_STATE_PAUSING:
    case AVZ_STATE_RESUMING:
    case AVZ_STATE_STOPPING:
    case AVZ_STATE_SAVING:
    case AVZ_STATE_RESTORING:
        return YES;
    default:
        return NO;
    }
}

/* The states a delegate's stop event (GUEST_STOPPED, STOPPED_WITH_ERROR) belongs to. */
static BOOL avz_state_ends_a_stop(NSInteger state)
{
    return state == AVZ_STATE_STOPPED || state == AVZ_STATE_ERROR;
}

/* What a delivery to the observer or to a completion waits for before it runs (see
 * ORDER OF EVENTS in shim/applevz.m). Deliveries also run in the order they
 * arrived: one that may run waits for those ahead of it. */
typedef NS_ENUM(NSInteger, AVZWait) {
    AVZWaitNothing = 0, /* only for the deliveries ahead of it */
    AVZWaitSettled = 1, /* a state reported that is not transitional */
    AVZWaitStop = 2,    /* stopped or error reported */
    AVZWaitState = 3,   /* its state reported, or any settled state reported after it came */
};

/* How long a delivery waits for the state change it implies before the shim gives up
 * waiting for the framework's key-value notification (see -deliveryExpired:). */
#define AVZ_HOLD_LIMIT_NS ((int64_t)(2 * NSEC_PER_SEC))

/* The VZVirtualMachine's delegate and the observer of its `state`. The framework holds
 * its delegate weakly; the AVZMachine keeps this object alive. Its reference to the
 * machine is weak: once the machine's -dealloc has begun, events are dropped here. */
@interface AVZMachineDelegate : NSObject <VZVirtualMachineDelegate>
@property (nonatomic, weak, readonly, nullable) AVZMachine *machine;
- (instancetype)initWithMachine:(AVZMachine *)machine;
@end

/* One observer event or one completion waiting for its turn (queue only). */
@interface AVZDelivery : NSObject
@property (nonatomic, readonly) AVZWait wait;
@property (nonatomic, readonly) NSInteger state; /* for AVZWaitState */
@property (nonatomic, readonly) int32_t event;   /* AVZ_EVENT_*, when `completion` is nil */
@property (nonatomic, readonly, nullable) NSError *error; /* the event's, borrowed by it */
@property (nonatomic, readonly, nullable) dispatch_block_t completion;
/* A completion's machine, held strongly until the completion ran (the AVZCompletion that
 * kept it alive may be gone by then); nil for observer events. */
@property (nonatomic, strong, nullable) AVZMachine *machine;
@property (nonatomic) BOOL moved; /* a state change was reported since it arrived */
@property (nonatomic) BOOL done;  /* it ran */
- (instancetype)initWithWait:(AVZWait)wait
                       state:(NSInteger)state
                       event:(int32_t)event
                       error:(nullable NSError *)error
                  completion:(nullable dispatch_block_t)completion;
@end

/* The machine's own side, used by its delegate and its completions (this file only). */
@interface AVZMachine ()
/* Any thread: a key-value notification for `state`; `newValue` is its change
 * dictionary's NSKeyValueChangeNewKey value. The one source of STATE_CHANGED (apart from
 * the last resort in -deliveryExpired:). */
- (void)stateDidChange:(nullable id)newValue;
/* Any thread: a delegate stop event (AVZ_EVENT_GUEST_STOPPED / _STOPPED_WITH_ERROR). */
- (void)stopEvent:(int32_t)event error:(nullable NSError *)error;
/* Any thread: the delegate's network attachment disconnection (macOS 12). */
- (void)networkDevice:(VZNetworkDevice *)networkDevice
    disconnectedWithError:(nullable NSError *)error API_AVAILABLE(macos(12.0));
/* On the queue: runs `completion` in its turn, once `wait` (with `state`) is met. Keeps
 * the machine alive until then. */
- (void)deliverCompletion:(dispatch_block_t)completion wait:(AVZWait)wait state:(NSInteger)state;
@end

@implementation AVZMachineDelegate

- (instancetype)initWithMachine:(AVZMachine *)machine
{
    self = [super init];
    if (self != nil) {
        _machine = machine;
    }
    return self;
}

- (void)guestDidStopVirtualMachine:(VZVirtualMachine *)virtualMachine
{
    (void)virtualMachine;
    [self.machine stopEvent:AVZ_EVENT_GUEST_STOPPED error:nil];
}

- (void)virtualMachine:(VZVirtualMachine *)virtualMachine didStopWithError:(NSError *)error
{
    (void)virtualMachine;
    [self.machine stopEvent:AVZ_EVENT_STOPPED_WITH_ERROR error:error];
}

/* macOS 12. The framework calls it each time a network interface fails to start and
 * its attachment is disconnected (also at boot, device reset or reboot, so possibly
 * several times per run); the device's `attachment` is nil afterwards. */
- (void)virtualMachine:(VZVirtualMachine *)virtualMachine
                         networkDevice:(VZNetworkDevice *)networkDevice
    attachmentWasDisconnectedWithError:(NSError *)error API_AVAILABLE(macos(12.0))
{
    (void)virtualMachine;
    [self.machine networkDevice:networkDevice disconnectedWithError:error];
}

- (void)observeValueForKeyPath:(nullable NSString *)keyPath
                      ofObject:(nullable id)object
                        change:(nullable NSDictionary<NSKeyValueChangeKey, id> *)change
                       context:(nullable void *)context
{
    if (context != &kAVZStateObservation) {
        [super observeValueForKeyPath:keyPath ofObject:object change:change context:context];
        return;
    }
    /* The value this notification carries (observed with NSKeyValueObservingOptionNew),
     * never a later read of `state`: each change is reported as it happened, in order,
     * so stopped -> starting -> stopped is not collapsed into nothing. */
    [self.machine stateDidChange:change != nil ? change[NSKeyValueChangeNewKey] : nil];
}

@end

@implementation AVZDelivery

- (instancetype)initWithWait:(AVZWait)wait
                       state:(NSInteger)state
                       event:(int32_t)event
                       error:(nullable NSError *)error
                  completion:(nullable dispatch_block_t)completion
{
    self = [super init];
    if (self != nil) {
        _wait = wait;
        _state = state;
        _event = event;
        _error = error;
        _completion = completion;
    }
    return self;
}

@end

/* An AVZ_EVENT_NETWORK_DISCONNECTED error: the framework's domain and code (and user
 * info), its description prefixed with "network device N: " (N: the device's index in
 * VZVirtualMachine.networkDevices, "?" if it is not there), the original as the
 * underlying error. Made here (+1 for the shim), borrowed by the observer. */
static NSError *avz_network_disconnected_error(NSError *_Nullable error, NSUInteger index)
{
    NSString *device = index == NSNotFound
                           ? @"network device ?"
                           : [NSString stringWithFormat:@"network device %lu", (unsigned long)index];
    if (error == nil) {
        return [[NSError alloc]
            initWithDomain:VZErrorDomain
                      code:AVZ_ERROR_NETWORK
                  userInfo:@{
                      NSLocalizedDescriptionKey : [NSString
                          stringWithFormat:@"%@: the network attachment was disconnected (the "
                                           @"framework gave no error)",
                                           device]
                  }];
    }
    NSMutableDictionary<NSErrorUserInfoKey, id> *info = [error.userInfo mutableCopy];
    info[NSLocalizedDescriptionKey] =
        [NSString stringWithFormat:@"%@: %@", device, error.localizedDescription];
    info[NSUnderlyingErrorKey] = error;
    return [[NSError alloc] initWithDomain:error.domain code:error.code userInfo:info];
}

@implementation AVZMachine {
    VZVirtualMachineConfiguration *_configuration;
    dispatch_queue_t _queue;
    VZVirtualMachine *_Nullable _vm; /* messaged only on _queue (see the top comment) */
    AVZMachineDelegate *_delegate;   /* strong: the framework's reference is weak */
    avz_state_observer_fn _Nullable _observer;
    void *_Nullable _observerContext;
    avz_context_release_fn _Nullable _observerRelease;
    NSInteger _reportedState; /* queue only: the state last reported (STATE_CHANGED) */
    /* queue only: observer events and completions waiting for their turn, in order */
    NSMutableArray<AVZDelivery *> *_deliveries;
    /* queue only: host vsock listeners by port (avz_vm_vsock_listen) */
    NSMutableDictionary<NSNumber *, AVZListener *> *_listeners;
}

- (nullable instancetype)initWithConfiguration:(nullable VZVirtualMachineConfiguration *)configuration
                                      observer:(nullable avz_state_observer_fn)observer
                               observerContext:(nullable void *)observerContext
                               observerRelease:(nullable avz_context_release_fn)observerRelease
                                         error:(NSError *_Nullable *_Nonnull)error
{
    self = [super init];
    if (self == nil) {
        *error = avz_error(AVZ_ERROR_INTERNAL, @"out of memory creating the virtual machine");
        return nil;
    }
    /* Stored now (events during init would find them), owned from a successful return
     * on: -dealloc releases the context only when the framework object exists. */
    _observer = observer;
    _observerContext = observerContext;
    _observerRelease = observerRelease;
    _reportedState = AVZ_STATE_STOPPED;
    _deliveries = [NSMutableArray array];
    _listeners = [NSMutableDictionary dictionary];

    dispatch_queue_attr_t attributes = dispatch_queue_attr_make_with_autorelease_frequency(
        DISPATCH_QUEUE_SERIAL, DISPATCH_AUTORELEASE_FREQUENCY_WORK_ITEM);
    NSString *label = [NSString stringWithFormat:@"applevz.vm.%p", (__bridge void *)self];
    _queue = dispatch_queue_create(label.UTF8String, attributes);
    dispatch_queue_set_specific(_queue, &kAVZQueueKey, (__bridge void *)_queue, NULL);
    _delegate = [[AVZMachineDelegate alloc] initWithMachine:self];

    if (configuration == nil) {
        *error = avz_error(AVZ_ERROR_INTERNAL, @"no configuration (NULL avz_config handle)");
        return nil;
    }
    /* -initWithConfiguration:queue: requires a valid configuration (it raises
     * otherwise): validate first and report the framework's reason. */
    NSError *invalid = nil;
    if (![configuration validateWithError:&invalid]) {
        *error = avz_or(invalid, AVZ_ERROR_INVALID_CONFIGURATION,
                        @"the virtual machine configuration is not valid");
        return nil;
    }
    /* Ours, like the framework's own copy: later changes to the avz_config do not reach
     * it (save and restore validate it first, see shim/applevz.m). */
    _configuration = (VZVirtualMachineConfiguration *)[configuration copy];

    dispatch_queue_t queue = _queue;
    AVZMachineDelegate *delegate = _delegate;
    __block VZVirtualMachine *vm = nil;
    __block NSError *failure = nil;
    __block NSInteger initialState = AVZ_STATE_STOPPED;
    /* A fresh queue: this thread cannot be on it, dispatch_sync is safe. */
    dispatch_sync(queue, ^{
        @autoreleasepool {
            @try {
                /* The framework stores its own copy of the configuration. */
                vm = [[VZVirtualMachine alloc] initWithConfiguration:configuration queue:queue];
            } @catch (NSException *exception) {
                vm = nil;
                failure = avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                                    [NSString stringWithFormat:@"cannot create the virtual "
                                                               @"machine: %@",
                                                               exception.reason]);
            }
            /* Attach the delegate and the observation, read the first state: an
             * exception there undoes what was attached and fails the creation (the
             * framework object then goes here, on its queue). */
            __block BOOL observing = NO;
            if (vm != nil && !avz_try(^{
                    vm.delegate = delegate;
                    [vm addObserver:delegate
                         forKeyPath:@"state"
                            options:NSKeyValueObservingOptionNew
                            context:&kAVZStateObservation];
                    observing = YES;
                    initialState = vm.state;
                })) {
                (void)avz_try(^{
                    if (observing) {
                        [vm removeObserver:delegate
                                forKeyPath:@"state"
                                   context:&kAVZStateObservation];
                    }
                    vm.delegate = nil;
                });
                vm = nil;
                failure = avz_error(AVZ_ERROR_INTERNAL,
                                    @"cannot create the virtual machine: the framework raised "
                                    @"an exception while its delegate and state observation "
                                    @"were attached");
            }
        }
    });
    if (vm == nil) {
        *error = failure != nil ? failure
                                : avz_error(AVZ_ERROR_INTERNAL, @"cannot create the virtual machine");
        return nil;
    }
    _vm = vm;
    _reportedState = initialState;
    return self;
}

- (void)dealloc
{
    /* Never capture `self` here, and never call the framework or Rust inline: copy what
     * the teardown needs into locals and do it in a work item on the queue. No observer
     * call can start from now on: every path to the observer goes through a strong
     * reference to this machine (blocks, completions, held completions) or through the
     * delegate's weak one, which reads nil once deallocation has begun. Observer events
     * still held in _deliveries are dropped with it. */
    avz_context_release_fn release = _observerRelease;
    void *context = _observerContext;
    _observer = NULL;
    _observerRelease = NULL;
    __block VZVirtualMachine *vm = _vm; /* the only strong reference from here on */
    _vm = nil;
    if (vm == nil) {
        /* -init failed before the framework object existed: no observation, no delegate,
         * no observer call ever happened, and the observer context is not ours
         * (avz_vm_create releases it before returning NULL). */
        return;
    }
    /* Detach and release on the queue, in a work item of its own, never inline: this
     * -dealloc may run on a thread the framework owns (dropping its last reference to a
     * completion handler), where waiting for the queue could deadlock, or on the queue
     * inside one of the framework's callouts (a completion, a key-value notification),
     * where the framework object must not be detached or destroyed. Never blocks. */
    AVZMachineDelegate *delegate = _delegate;
    /* Nobody else can reach the table any more: safe to read here on any thread. */
    NSArray<AVZListener *> *listeners = _listeners.allValues;
    _listeners = [NSMutableDictionary dictionary];
    dispatch_async(_queue, ^{
        @autoreleasepool {
            /* Each inside @try of its own: whatever the framework raises, the contexts
             * below are still released exactly once. */
            (void)avz_try(^{
                [vm removeObserver:delegate forKeyPath:@"state" context:&kAVZStateObservation];
            });
            (void)avz_try(^{
                vm.delegate = nil;
            });
            /* The listeners still installed: each context exactly once (removal and
             * replacement released the others), before the observer's, as the simulator
             * does. On the queue, so no accept call is running; none starts afterwards
             * (-releaseContext). */
            for (NSUInteger i = 0; i < listeners.count; i++) {
                [listeners[i] releaseContext];
            }
            /* After the last observer call (see above): the context is no longer in use. */
            if (release != NULL) {
                release(context);
            }
            vm = nil; /* the framework object goes here, on its queue */
        }
    });
}

- (VZVirtualMachine *)vm
{
    return (VZVirtualMachine *_Nonnull)_vm;
}

- (VZVirtualMachineConfiguration *)configuration
{
    return _configuration;
}

- (dispatch_queue_t)queue
{
    return _queue;
}

- (BOOL)isOnQueue
{
    return avz_is_on_queue(_queue);
}

- (nullable AVZListener *)exchangeListener:(nullable AVZListener *)listener forPort:(uint32_t)port
{
    NSNumber *key = [NSNumber numberWithUnsignedInt:port];
    AVZListener *previous = _listeners[key];
    if (listener != nil) {
        _listeners[key] = listener;
    } else {
        [_listeners removeObjectForKey:key];
    }
    return previous;
}

- (void)syncOnQueue:(__attribute__((noescape)) dispatch_block_t)block
{
    if (avz_is_on_queue(_queue)) {
        @autoreleasepool {
            block();
        }
    } else {
        dispatch_sync(_queue, ^{
            @autoreleasepool {
                block();
            }
        });
    }
}

- (void)asyncOnQueue:(dispatch_block_t)block
{
    dispatch_async(_queue, ^{
        @autoreleasepool {
            block();
        }
    });
}

- (void)performOnQueue:(dispatch_block_t)block
{
    if (avz_is_on_queue(_queue)) {
        block();
    } else {
        [self asyncOnQueue:block];
    }
}

/* On the queue. The error is borrowed for the call (the observer retains it to keep it). */
- (void)notifyObserver:(int32_t)event error:(nullable NSError *)error
{
    avz_state_observer_fn observer = _observer;
    if (observer != NULL) {
        observer(_observerContext, (int32_t)_reportedState, event, (__bridge CFErrorRef)error);
    }
}

/* On the queue: whether `delivery`'s wait is over (see AVZWait). */
- (BOOL)isReady:(AVZDelivery *)delivery
{
    NSInteger state = _reportedState;
    switch (delivery.wait) {
    case AVZWaitNothing:
        return YES;
    case AVZWaitSettled:
        return !avz_state_is_transitional(state);
    case AVZWaitStop:
        return avz_state_ends_a_stop(state);
    case AVZWaitState:
        return state == delivery.state || (delivery.moved && !avz_state_is_transitional(state));
    }
    return YES;
}

/* On the queue: runs the deliveries at the head of the line whose wait is over, in
 * order. With `until` (still waiting), first runs every delivery up to and including
 * it, ready or not. */
- (void)runDeliveriesUntil:(nullable AVZDelivery *)until
{
    /* A completion or observer call may drop the last other reference to this machine. */
    __attribute__((objc_precise_lifetime)) AVZMachine *keepAlive = self;
    (void)keepAlive;
    while (_deliveries.count > 0) {
        AVZDelivery *head = _deliveries[0];
        BOOL forced = until != nil && !until.done;
        if (!forced && ![self isReady:head]) {
            return;
        }
        [_deliveries removeObjectAtIndex:0];
        head.done = YES;
        dispatch_block_t completion = head.completion;
        if (completion != nil) {
            completion();
        } else {
            [self notifyObserver:head.event error:head.error];
        }
        head.machine = nil; /* a held completion's reference to this machine */
    }
}

/* On the queue: queues `delivery` behind those waiting and runs what can run. One that
 * still waits gets a deadline (see -deliveryExpired:). */
- (void)enqueue:(AVZDelivery *)delivery
{
    [_deliveries addObject:delivery];
    [self runDeliveriesUntil:nil];
    if (delivery.done) {
        return;
    }
    __weak AVZMachine *weakSelf = self;
    dispatch_after(dispatch_time(DISPATCH_TIME_NOW, AVZ_HOLD_LIMIT_NS), _queue, ^{
        @autoreleasepool {
            [weakSelf deliveryExpired:delivery];
        }
    });
}

/* On the queue, AVZ_HOLD_LIMIT_NS after `delivery` came and found its state not
 * reported: the framework's key-value notification did not come (or not yet). Last
 * resort, never the normal path: read `state` once, report it if it differs from the
 * state last reported, then run every delivery up to and including this one. A
 * notification still in flight then reports its (older) value afterwards. */
- (void)deliveryExpired:(AVZDelivery *)delivery
{
    if (delivery.done) {
        return;
    }
    VZVirtualMachine *vm = _vm;
    __block NSInteger state = _reportedState;
    if (vm != nil && avz_try(^{
            state = vm.state;
        })) {
        [self reportState:state];
    }
    [self runDeliveriesUntil:delivery];
}

/* On the queue: reports `state` (STATE_CHANGED) unless it is the state last reported,
 * then runs the deliveries this lets through. */
- (void)reportState:(NSInteger)state
{
    if (state == _reportedState) {
        return;
    }
    _reportedState = state;
    for (NSUInteger i = 0; i < _deliveries.count; i++) {
        _deliveries[i].moved = YES;
    }
    __attribute__((objc_precise_lifetime)) AVZMachine *keepAlive = self;
    (void)keepAlive;
    [self notifyObserver:AVZ_EVENT_STATE_CHANGED error:nil];
    [self runDeliveriesUntil:nil];
}

- (void)stateDidChange:(nullable id)newValue
{
    BOOL carried = [newValue isKindOfClass:[NSNumber class]];
    NSInteger state = carried ? ((NSNumber *)newValue).integerValue : AVZ_STATE_STOPPED;
    [self performOnQueue:^{
        /* A notification without a new value (never seen; the observation asks for one)
         * falls back to reading `state`. */
        VZVirtualMachine *vm = self->_vm;
        __block NSInteger read = AVZ_NO_STATE;
        if (carried) {
            [self reportState:state];
        } else if (vm != nil && avz_try(^{
                       read = vm.state;
                   })) {
            [self reportState:read];
        }
    }];
}

- (void)stopEvent:(int32_t)event error:(nullable NSError *)error
{
    NSError *stopError = error;
    if (event == AVZ_EVENT_STOPPED_WITH_ERROR && stopError == nil) {
        stopError = avz_error(AVZ_ERROR_INTERNAL,
                              @"the virtual machine stopped because of an unspecified error");
    }
    AVZDelivery *delivery = [[AVZDelivery alloc] initWithWait:AVZWaitStop
                                                        state:AVZ_NO_STATE
                                                        event:event
                                                        error:stopError
                                                   completion:nil];
    [self performOnQueue:^{
        [self enqueue:delivery];
    }];
}

- (void)networkDevice:(VZNetworkDevice *)networkDevice
    disconnectedWithError:(nullable NSError *)error
{
    [self performOnQueue:^{
        NSUInteger index = NSNotFound;
        VZVirtualMachine *vm = self->_vm;
        __block NSArray<VZNetworkDevice *> *devices = nil;
        if (vm != nil && avz_try(^{
                devices = vm.networkDevices;
            })) {
            for (NSUInteger i = 0; i < devices.count && index == NSNotFound; i++) {
                if (devices[i] == networkDevice) {
                    index = i;
                }
            }
        }
        [self enqueue:[[AVZDelivery alloc] initWithWait:AVZWaitNothing
                                                   state:AVZ_NO_STATE
                                                   event:AVZ_EVENT_NETWORK_DISCONNECTED
                                                   error:avz_network_disconnected_error(error, index)
                                              completion:nil]];
    }];
}

- (void)deliverCompletion:(dispatch_block_t)completion wait:(AVZWait)wait state:(NSInteger)state
{
    AVZDelivery *delivery = [[AVZDelivery alloc] initWithWait:wait
                                                        state:state
                                                        event:AVZ_EVENT_STATE_CHANGED
                                                        error:nil
                                                   completion:completion];
    delivery.machine = self; /* until it ran: a completion is due exactly once */
    [self enqueue:delivery];
}

@end

@implementation AVZCompletion {
    AVZMachine *_machine; /* strong: the VM lives until each of its completions ran */
    NSInteger _successState;
    AVZDeliverBlock _Nullable _deliver; /* nil once an outcome counted */
    BOOL _called;                       /* queue only: an outcome counted */
}

- (instancetype)initWithMachine:(AVZMachine *)machine
                   successState:(NSInteger)successState
                        deliver:(AVZDeliverBlock)deliver
{
    self = [super init];
    if (self != nil) {
        _machine = machine;
        _successState = successState;
        _deliver = deliver;
    }
    return self;
}

- (void)completeWithError:(nullable NSError *)error
{
    [self completeWithError:error descriptor:-1];
}

- (void)completeWithError:(nullable NSError *)error descriptor:(int)descriptor
{
    [_machine performOnQueue:^{
        [self finishWithError:error descriptor:descriptor fromFramework:YES];
    }];
}

- (void)refuseWithError:(NSError *)error
{
    [_machine performOnQueue:^{
        [self finishWithError:error descriptor:-1 fromFramework:NO];
    }];
}

/* On the queue: the first outcome is handed to the machine, to run in its turn once the
 * state it implies was reported: a success, the operation's state; a failure from the
 * framework, a settled state (the operation is over); the shim's own refusal, nothing. */
- (void)finishWithError:(nullable NSError *)error
             descriptor:(int)descriptor
          fromFramework:(BOOL)fromFramework
{
    if (_called) {
        if (descriptor >= 0) {
            close(descriptor); /* a second outcome: nobody takes its descriptor */
        }
        return;
    }
    _called = YES;
    AVZDeliverBlock deliver = _deliver;
    _deliver = nil;
    AVZWait wait = AVZWaitNothing;
    if (fromFramework && _successState != AVZ_NO_STATE) {
        wait = error == nil ? AVZWaitState : AVZWaitSettled;
    }
    [_machine deliverCompletion:^{
        if (deliver != nil) {
            deliver(error, descriptor);
        } else if (descriptor >= 0) {
            close(descriptor);
        }
    }
                           wait:wait
                          state:_successState];
}

- (void)dealloc
{
    if (_called || _deliver == nil) {
        return;
    }
    /* The framework released the handler without calling it: the completion is still
     * due exactly once. Never inline (this may run on any thread, or on the queue inside
     * a framework callout): a work item of its own on the queue calls it, after the
     * deliveries already waiting. Never capture `self` here. */
    AVZDeliverBlock deliver = _deliver;
    AVZMachine *machine = _machine;
    NSError *error = avz_error(AVZ_ERROR_INTERNAL,
                               @"the framework dropped the operation without completing it");
    [machine asyncOnQueue:^{
        [machine deliverCompletion:^{
            deliver(error, -1);
        }
                              wait:AVZWaitNothing
                             state:AVZ_NO_STATE];
    }];
}

@end

/* Borrows the object behind an avz_vm handle (+0). */
AVZMachine *_Nullable avz_machine(avz_vm *_Nullable vm)
{
    return (__bridge AVZMachine *)(void *)vm;
}

/* The delivery of an avz_completion_fn: the error leaves +1. */
static AVZDeliverBlock avz_completion_delivery(avz_completion_fn _Nullable function,
                                               void *_Nullable context)
{
    return ^(NSError *_Nullable error, int descriptor) {
        if (descriptor >= 0) {
            close(descriptor); /* never set for these operations */
        }
        if (function != NULL) {
            function(context, error != nil ? (__bridge_retained CFErrorRef)error : NULL);
        }
    };
}

void avz_vm_async(avz_vm *_Nullable vm, avz_completion_fn _Nullable completion,
                  void *_Nullable context, NSString *what, NSInteger successState,
                  AVZOperationBlock operation)
{
    @autoreleasepool {
        AVZMachine *machine = avz_machine(vm);
        if (machine == nil) {
            /* No queue to complete on: a programming error, reported inline (documented
             * in include/applevz.h). */
            if (completion != NULL) {
                NSError *error = avz_error(AVZ_ERROR_INTERNAL, @"no virtual machine (NULL avz_vm)");
                completion(context, (__bridge_retained CFErrorRef)error);
            }
            return;
        }
        AVZCompletion *pending =
            [[AVZCompletion alloc] initWithMachine:machine
                                      successState:successState
                                           deliver:avz_completion_delivery(completion, context)];
        AVZCompletionBlock done = ^(NSError *_Nullable error) {
            [pending completeWithError:error];
        };
        AVZCompletionBlock refuse = ^(NSError *_Nullable error) {
            [pending refuseWithError:error != nil ? (NSError *_Nonnull)error
                                                  : avz_error(AVZ_ERROR_INTERNAL, what)];
        };
        [machine asyncOnQueue:^{
            @try {
                operation(machine.vm, done, refuse);
            } @catch (NSException *exception) {
                refuse(avz_exception_error(exception, what));
            }
        }];
    }
}

/* Reads a BOOL property of the VM on its queue. */
bool avz_vm_read_bool(avz_vm *_Nullable vm,
                      BOOL (^__attribute__((noescape)) getter)(VZVirtualMachine *))
{
    AVZMachine *machine = avz_machine(vm);
    if (machine == nil) {
        return false;
    }
    __block BOOL value = NO;
    [machine syncOnQueue:^{
        /* An exception reads as NO (the call is not possible now). */
        if (!avz_try(^{
                value = getter(machine.vm);
            })) {
            value = NO;
        }
    }];
    return value;
}

bool avz_vm_sync(avz_vm *_Nullable vm, CFErrorRef _Nullable *_Nullable error, NSString *what,
                 __attribute__((noescape)) AVZSyncBody body)
{
    return avz_run(error, ^NSError *_Nullable {
        AVZMachine *machine = avz_machine(vm);
        if (machine == nil) {
            return avz_error(AVZ_ERROR_INTERNAL, @"no virtual machine (NULL avz_vm)");
        }
        __block NSError *failure = nil;
        [machine syncOnQueue:^{
            @try {
                failure = body(machine, machine.vm);
            } @catch (NSException *exception) {
                failure = avz_exception_error(exception, what);
            }
        }];
        return failure;
    });
}

NS_ASSUME_NONNULL_END
