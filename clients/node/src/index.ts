// @grantvault/client: the Node.js client of grantvaultd's agent socket.
// Reference and example: docs/clients.md.

export { connect, Client } from './client.js';
export type { ConnectOptions, ResolveRequest, ResolvedToken } from './client.js';
export type { GrantEvent, GrantEventKind, GrantEventStream, SubscribeOptions } from './subscribe.js';
export { MAX_PROXY_BODY_BYTES } from './proxy.js';
export type { GrantvaultBody, GrantvaultFetchInit } from './proxy.js';
export {
  AlreadyExistsError,
  CancelledError,
  DeadlineExceededError,
  errorFromFrame,
  FailedPreconditionError,
  GrantvaultError,
  InternalError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  ReauthRequiredError,
  ResourceExhaustedError,
  RevokedError,
  UnauthenticatedError,
  UnavailableError,
} from './errors.js';
export type { ErrorCodeName, GrantvaultErrorOptions } from './errors.js';
export { encodeFrame, FrameDecoder, FramingError, MAX_FRAME_BYTES } from './framing.js';
export { loadManifest, ManifestError, manifestToPolicyJson, MAX_MANIFEST_BYTES, parseManifest, validateManifest } from './manifest.js';
export type { Manifest, ManifestTool } from './manifest.js';
