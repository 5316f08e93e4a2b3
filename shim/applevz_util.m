/*
 * shim/applevz_util.m — errors, paths and state names shared by the shim's files.
 *
 * Part of the macOS shim (shim/applevz*.m, ARC Objective-C): see shim/applevz.m for the
 * design and shim/applevz_internal.h for what each file provides.
 */

#include "applevz_internal.h"

NS_ASSUME_NONNULL_BEGIN

/* ================================================================================== */
/* Errors                                                                             */
/* ================================================================================== */

/* An error in VZErrorDomain with a description, optionally wrapping another error. */
NSError *avz_error_with(NSInteger code, NSString *description,
                        NSError *_Nullable underlying, NSString *_Nullable path)
{
    NSMutableDictionary<NSErrorUserInfoKey, id> *info = [NSMutableDictionary dictionary];
    info[NSLocalizedDescriptionKey] = description;
    if (underlying != nil) {
        info[NSUnderlyingErrorKey] = underlying;
    }
    if (path != nil) {
        info[NSFilePathErrorKey] = path;
    }
    return [NSError errorWithDomain:VZErrorDomain code:code userInfo:info];
}

NSError *avz_error(NSInteger code, NSString *description)
{
    return avz_error_with(code, description, nil, nil);
}

/* VZErrorDomain code 10 for a feature this Mac (or this build) does not have. */
NSError *avz_not_supported(NSString *feature, NSString *needs)
{
    return avz_error(AVZ_ERROR_NOT_SUPPORTED,
                     [NSString stringWithFormat:@"%@ is not supported on this Mac (needs %@)",
                                                feature, needs]);
}

/* The framework's error for a call that reported failure, or one made here when the
 * framework gave none: a failing call never yields NULL-with-false. */
NSError *avz_or(NSError *_Nullable frameworkError, NSInteger code, NSString *description)
{
    return frameworkError != nil ? frameworkError : avz_error(code, description);
}

/* `frameworkError` as VZErrorDomain code `code`: kept when it already is one, otherwise
 * wrapped ("<what>: <its description>", the original as the underlying error), so the
 * ABI's documented code holds whatever the framework chose. */
NSError *avz_as_code(NSError *_Nullable frameworkError, NSInteger code, NSString *what)
{
    if (frameworkError == nil) {
        return avz_error(code, what);
    }
    if ([frameworkError.domain isEqualToString:VZErrorDomain] && frameworkError.code == code) {
        return frameworkError;
    }
    return avz_error_with(code,
                          [NSString stringWithFormat:@"%@: %@", what,
                                                     frameworkError.localizedDescription],
                          frameworkError, nil);
}

/* An error in NSPOSIXErrorDomain (errno `code`) with a description. */
NSError *avz_posix_error(int code, NSString *description)
{
    return [NSError errorWithDomain:NSPOSIXErrorDomain
                               code:code
                           userInfo:@{NSLocalizedDescriptionKey : description}];
}

/* Runs `body` in an autorelease pool and turns its result into the ABI's convention:
 * true and *out = NULL on success; false and *out = +1 error on failure. An Objective-C
 * exception from the framework becomes an error (code 1) instead of unwinding into the
 * caller (Rust cannot unwind a foreign exception: the process would abort). Every
 * @catch in the shim relies on -fobjc-arc-exceptions (build.rs, shim/check/clang-flags):
 * without it ARC does not release the objects held by the frames an exception unwinds. */
bool avz_run(CFErrorRef _Nullable *_Nullable out,
             NSError *_Nullable (^__attribute__((noescape)) body)(void))
{
    if (out != NULL) {
        *out = NULL;
    }
    NSError *failure = nil;
    @autoreleasepool {
        @try {
            failure = body();
        } @catch (NSException *exception) {
            NSString *reason = exception.reason;
            failure = avz_error(AVZ_ERROR_INTERNAL,
                                [NSString stringWithFormat:@"the framework raised %@ (%@)",
                                                           exception.name,
                                                           reason != nil ? reason
                                                                         : @"no reason given"]);
        }
    }
    if (failure == nil) {
        return true;
    }
    if (out != NULL) {
        *out = (__bridge_retained CFErrorRef)failure;
    }
    return false;
}

/* ================================================================================== */
/* Paths and states                                                                   */
/* ================================================================================== */

/* A file URL for a NUL-terminated UTF-8 path (borrowed). */
NSURL *_Nullable avz_path_url(const char *_Nullable path, NSString *what, NSInteger code,
                              NSError *_Nullable *_Nonnull error)
{
    NSString *string = path != NULL ? [NSString stringWithUTF8String:path] : nil;
    if (string == nil || string.length == 0) {
        *error = avz_error(code, [NSString stringWithFormat:@"the %@ path is missing, empty or "
                                                            @"not valid UTF-8",
                                                            what]);
        return nil;
    }
    return [NSURL fileURLWithPath:string];
}

NSString *avz_state_name(NSInteger state)
{
    switch (state) {
    case AVZ_STATE_STOPPED: return @"stopped";
    case AVZ_STATE_RUNNING: return @"running";
    case AVZ_STATE_PAUSED: return @"paused";
    case AVZ_STATE_ERROR: return @"in the error state";
    case AVZ_STATE_STARTING: return @"starting";
    case AVZ_STATE_PAUSING: return @"pausing";
    case AVZ_STATE_RESUMING: return @"resuming";
    case AVZ_STATE_STOPPING: return @"stopping";
    case AVZ_STATE_SAVING: return @"saving";
    case AVZ_STATE_RESTORING: return @"restoring";
    default: return [NSString stringWithFormat:@"in state %ld", (long)state];
    }
}

/* An Objective-C exception raised by the framework, as an error (code 1): it must not
 * unwind through a dispatch work item (that aborts the process) and the operation's
 * completion is still due. */
BOOL avz_try(__attribute__((noescape)) dispatch_block_t body)
{
    @try {
        body();
        return YES;
    } @catch (NSException *exception) {
        (void)exception;
        return NO;
    }
}

NSError *avz_exception_error(NSException *exception, NSString *what)
{
    NSString *reason = exception.reason;
    return avz_error(AVZ_ERROR_INTERNAL,
                     [NSString stringWithFormat:@"%@: the framework raised %@ (%@)", what,
                                                exception.name,
                                                reason != nil ? reason : @"no reason given"]);
}

NS_ASSUME_NONNULL_END
