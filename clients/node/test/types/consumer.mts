// Compiled (not run) by unit-packaging.test.mjs: the public types as an agent host uses them.
import { connect, GrantvaultError, RevokedError, type GrantEvent, type ResolvedToken } from '@grantvault/client';

export async function agentHost(socketPath: string): Promise<number> {
  const client = await connect({ socketPath, clientName: 'types', defaultDeadlineMs: 1000, reconnect: true });
  const token: ResolvedToken = await client.resolve({ workspace: 'w', connector: 'c', tool: 't', scopes: ['read'] });
  const expires: Date | null = token.expiresAt;
  token.accessToken.fill(0);
  const response: Response = await client.fetch('/v1/things', {
    workspace: 'w', connector: 'c', tool: 't', method: 'POST', headers: [['x', 'y']], body: new URLSearchParams({ a: 'b' }),
  });
  const stream = await client.subscribe('w', { signal: AbortSignal.timeout(1000) });
  for await (const event of stream) {
    const kind: GrantEvent['kind'] = event.kind;
    if (kind === 'revoked') break;
  }
  try {
    await client.resolve({ workspace: 'w', connector: 'c' });
  } catch (e) {
    if (e instanceof RevokedError) return e.codeNumber;
    if (e instanceof GrantvaultError) return e.retryAfterMs ?? (e.upstreamStatus ?? 0);
  }
  client.close();
  return response.status + (expires?.getTime() ?? 0);
}
