// Typed errors for the codes of grantvault.v1.Error (docs/protocol.md, "Error
// codes"). Every failure the client reports is a GrantvaultError: answers of
// the daemon, and failures found locally (a deadline, a broken connection, a
// request that does not fit a frame), which use the same codes.
//
// Messages come from the daemon (which never puts a secret in them) or from
// this package (which never puts a token, a header value or a body in them).

import { Error_Code, type Error as ErrorMessage } from './gen/grantvault/v1/common_pb.js';

/** The names of the protocol's error codes. */
export type ErrorCodeName =
  | 'UNSPECIFIED'
  | 'INVALID_ARGUMENT'
  | 'UNAUTHENTICATED'
  | 'PERMISSION_DENIED'
  | 'NOT_FOUND'
  | 'REVOKED'
  | 'REAUTH_REQUIRED'
  | 'UNAVAILABLE'
  | 'DEADLINE_EXCEEDED'
  | 'RESOURCE_EXHAUSTED'
  | 'INTERNAL'
  | 'FAILED_PRECONDITION'
  | 'ALREADY_EXISTS'
  | 'CANCELLED';

const CODE_NAMES: Readonly<Record<number, ErrorCodeName>> = {
  [Error_Code.CODE_UNSPECIFIED]: 'UNSPECIFIED',
  [Error_Code.INVALID_ARGUMENT]: 'INVALID_ARGUMENT',
  [Error_Code.UNAUTHENTICATED]: 'UNAUTHENTICATED',
  [Error_Code.PERMISSION_DENIED]: 'PERMISSION_DENIED',
  [Error_Code.NOT_FOUND]: 'NOT_FOUND',
  [Error_Code.REVOKED]: 'REVOKED',
  [Error_Code.REAUTH_REQUIRED]: 'REAUTH_REQUIRED',
  [Error_Code.UNAVAILABLE]: 'UNAVAILABLE',
  [Error_Code.DEADLINE_EXCEEDED]: 'DEADLINE_EXCEEDED',
  [Error_Code.RESOURCE_EXHAUSTED]: 'RESOURCE_EXHAUSTED',
  [Error_Code.INTERNAL]: 'INTERNAL',
  [Error_Code.FAILED_PRECONDITION]: 'FAILED_PRECONDITION',
  [Error_Code.ALREADY_EXISTS]: 'ALREADY_EXISTS',
  [Error_Code.CANCELLED]: 'CANCELLED',
};

export interface GrantvaultErrorOptions {
  /** With UNAVAILABLE / RESOURCE_EXHAUSTED: when to try again, in ms. */
  retryAfterMs?: number;
  /** A proxied call the API refused with 429 or 503: the API's status. */
  upstreamStatus?: number;
  cause?: unknown;
}

/** The base of every error this package throws or rejects with. */
export class GrantvaultError extends Error {
  /** The protocol's code, by name ('REVOKED', …). */
  readonly code: ErrorCodeName;
  /** The protocol's code, by number (Error.Code: REVOKED = 5, …). */
  readonly codeNumber: number;
  /** When to try again (ms), or null when the daemon gave no hint. */
  readonly retryAfterMs: number | null;
  /** The API's HTTP status for a proxied call it refused (429, 503), or null. */
  readonly upstreamStatus: number | null;

  constructor(codeNumber: number, message: string, options: GrantvaultErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.codeNumber = codeNumber;
    this.code = CODE_NAMES[codeNumber] ?? 'UNSPECIFIED';
    this.retryAfterMs = options.retryAfterMs ?? null;
    this.upstreamStatus = options.upstreamStatus ?? null;
    this.name = new.target.name;
  }
}

export class InvalidArgumentError extends GrantvaultError {
  constructor(message: string, options?: GrantvaultErrorOptions) {
    super(Error_Code.INVALID_ARGUMENT, message, options);
  }
}
export class UnauthenticatedError extends GrantvaultError {
  constructor(message: string, options?: GrantvaultErrorOptions) {
    super(Error_Code.UNAUTHENTICATED, message, options);
  }
}
export class PermissionDeniedError extends GrantvaultError {
  constructor(message: string, options?: GrantvaultErrorOptions) {
    super(Error_Code.PERMISSION_DENIED, message, options);
  }
}
export class NotFoundError extends GrantvaultError {
  constructor(message: string, options?: GrantvaultErrorOptions) {
    super(Error_Code.NOT_FOUND, message, options);
  }
}
export class RevokedError extends GrantvaultError {
  constructor(message: string, options?: GrantvaultErrorOptions) {
    super(Error_Code.REVOKED, message, options);
  }
}
export class ReauthRequiredError extends GrantvaultError {
  constructor(message: string, options?: GrantvaultErrorOptions) {
    super(Error_Code.REAUTH_REQUIRED, message, options);
  }
}
export class UnavailableError extends GrantvaultError {
  constructor(message: string, options?: GrantvaultErrorOptions) {
    super(Error_Code.UNAVAILABLE, message, options);
  }
}
export class DeadlineExceededError extends GrantvaultError {
  constructor(message: string, options?: GrantvaultErrorOptions) {
    super(Error_Code.DEADLINE_EXCEEDED, message, options);
  }
}
export class ResourceExhaustedError extends GrantvaultError {
  constructor(message: string, options?: GrantvaultErrorOptions) {
    super(Error_Code.RESOURCE_EXHAUSTED, message, options);
  }
}
export class InternalError extends GrantvaultError {
  constructor(message: string, options?: GrantvaultErrorOptions) {
    super(Error_Code.INTERNAL, message, options);
  }
}
export class FailedPreconditionError extends GrantvaultError {
  constructor(message: string, options?: GrantvaultErrorOptions) {
    super(Error_Code.FAILED_PRECONDITION, message, options);
  }
}
export class AlreadyExistsError extends GrantvaultError {
  constructor(message: string, options?: GrantvaultErrorOptions) {
    super(Error_Code.ALREADY_EXISTS, message, options);
  }
}
export class CancelledError extends GrantvaultError {
  constructor(message: string, options?: GrantvaultErrorOptions) {
    super(Error_Code.CANCELLED, message, options);
  }
}

type ErrorClass = new (message: string, options?: GrantvaultErrorOptions) => GrantvaultError;

const CLASSES: Readonly<Record<number, ErrorClass>> = {
  [Error_Code.INVALID_ARGUMENT]: InvalidArgumentError,
  [Error_Code.UNAUTHENTICATED]: UnauthenticatedError,
  [Error_Code.PERMISSION_DENIED]: PermissionDeniedError,
  [Error_Code.NOT_FOUND]: NotFoundError,
  [Error_Code.REVOKED]: RevokedError,
  [Error_Code.REAUTH_REQUIRED]: ReauthRequiredError,
  [Error_Code.UNAVAILABLE]: UnavailableError,
  [Error_Code.DEADLINE_EXCEEDED]: DeadlineExceededError,
  [Error_Code.RESOURCE_EXHAUSTED]: ResourceExhaustedError,
  [Error_Code.INTERNAL]: InternalError,
  [Error_Code.FAILED_PRECONDITION]: FailedPreconditionError,
  [Error_Code.ALREADY_EXISTS]: AlreadyExistsError,
  [Error_Code.CANCELLED]: CancelledError,
};

/**
 * The typed error for an Error frame of the daemon. An unknown or unset code
 * (a newer daemon, or a bug) becomes a plain GrantvaultError that keeps the
 * number.
 */
export function errorFromFrame(frame: ErrorMessage): GrantvaultError {
  const options: GrantvaultErrorOptions = {};
  if (frame.retryAfterMs > 0) options.retryAfterMs = frame.retryAfterMs;
  if (frame.upstreamStatus > 0) options.upstreamStatus = frame.upstreamStatus;
  const message = frame.message === '' ? `grantvaultd answered ${CODE_NAMES[frame.code] ?? `code ${frame.code}`}` : frame.message;
  const ErrorType = CLASSES[frame.code];
  return ErrorType ? new ErrorType(message, options) : new GrantvaultError(frame.code, message, options);
}
