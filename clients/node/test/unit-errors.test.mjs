// Error mapping (src/errors.ts): every protocol code to its class.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { create } from '@bufbuild/protobuf';

import * as gv from '@grantvault/client';
import { ErrorSchema } from '../dist/esm/gen/grantvault/v1/common_pb.js';

const expected = [
  [1, 'INVALID_ARGUMENT', gv.InvalidArgumentError],
  [2, 'UNAUTHENTICATED', gv.UnauthenticatedError],
  [3, 'PERMISSION_DENIED', gv.PermissionDeniedError],
  [4, 'NOT_FOUND', gv.NotFoundError],
  [5, 'REVOKED', gv.RevokedError],
  [6, 'REAUTH_REQUIRED', gv.ReauthRequiredError],
  [7, 'UNAVAILABLE', gv.UnavailableError],
  [8, 'DEADLINE_EXCEEDED', gv.DeadlineExceededError],
  [9, 'RESOURCE_EXHAUSTED', gv.ResourceExhaustedError],
  [10, 'INTERNAL', gv.InternalError],
  [11, 'FAILED_PRECONDITION', gv.FailedPreconditionError],
  [12, 'ALREADY_EXISTS', gv.AlreadyExistsError],
  [13, 'CANCELLED', gv.CancelledError],
];

test('each protocol code maps to its class, name and number', () => {
  for (const [number, name, ErrorClass] of expected) {
    const error = gv.errorFromFrame(create(ErrorSchema, { code: number, message: `m${number}` }));
    assert.ok(error instanceof ErrorClass, name);
    assert.ok(error instanceof gv.GrantvaultError);
    assert.ok(error instanceof Error);
    assert.equal(error.code, name);
    assert.equal(error.codeNumber, number);
    assert.equal(error.message, `m${number}`);
    assert.equal(error.name, ErrorClass.name);
    assert.equal(error.retryAfterMs, null);
    assert.equal(error.upstreamStatus, null);
    assert.equal(new ErrorClass('x').code, name);
  }
});

test('retry_after_ms and upstream_status are carried', () => {
  const error = gv.errorFromFrame(create(ErrorSchema, { code: 7, message: 'API busy', retryAfterMs: 2000, upstreamStatus: 429 }));
  assert.ok(error instanceof gv.UnavailableError);
  assert.equal(error.retryAfterMs, 2000);
  assert.equal(error.upstreamStatus, 429);
});

test('an unknown code keeps its number; an empty message is filled in', () => {
  const error = gv.errorFromFrame(create(ErrorSchema, { code: 99 }));
  assert.equal(error.constructor, gv.GrantvaultError);
  assert.equal(error.codeNumber, 99);
  assert.equal(error.code, 'UNSPECIFIED');
  assert.match(error.message, /code 99/);
  assert.equal(gv.errorFromFrame(create(ErrorSchema, { code: 5 })).message, 'grantvaultd answered REVOKED');
});
