// Compiled (not run) by unit-packaging.test.mjs: the CommonJS declarations (the "require" condition).
import { connect, RevokedError } from '@grantvault/client';

export async function resolveOnce(socketPath: string): Promise<Buffer | number> {
  const client = await connect({ socketPath });
  try {
    return (await client.resolve({ workspace: 'w', connector: 'c' })).accessToken;
  } catch (e) {
    return e instanceof RevokedError ? e.codeNumber : -1;
  } finally {
    client.close();
  }
}
