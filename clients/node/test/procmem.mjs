// Searches a live process's memory (every readable mapping in
// /proc/<pid>/maps, read through /proc/<pid>/mem; needs ptrace access to it,
// as root or the same uid under yama ptrace_scope 0/1 for a child) for byte
// strings.
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';

const CHUNK = 8 << 20;

/** For each needle (Buffer), whether it occurs anywhere in the process's readable memory. */
export function searchProcessMemory(pid, needles) {
  const found = needles.map(() => false);
  const longest = Math.max(...needles.map((n) => n.length));
  const maps = readFileSync(`/proc/${pid}/maps`, 'utf8').trim().split('\n');
  const fd = openSync(`/proc/${pid}/mem`, 'r');
  let bytesRead = 0;
  try {
    for (const line of maps) {
      const [range, perms, , , , path = ''] = line.split(/\s+/);
      if (!perms.startsWith('r') || path === '[vvar]' || path === '[vsyscall]') continue;
      const [start, end] = range.split('-').map((h) => Number.parseInt(h, 16));
      let carry = Buffer.alloc(0);
      for (let at = start; at < end; at += CHUNK) {
        const buffer = Buffer.alloc(Math.min(CHUNK, end - at));
        let n;
        try {
          n = readSync(fd, buffer, 0, buffer.length, at);
        } catch {
          break; // a mapping that cannot be read (a guard page, gone meanwhile)
        }
        bytesRead += n;
        const window = Buffer.concat([carry, buffer.subarray(0, n)]);
        needles.forEach((needle, i) => {
          if (!found[i] && window.includes(needle)) found[i] = true;
        });
        carry = window.subarray(Math.max(0, window.length - longest + 1));
        if (n < buffer.length) break;
      }
    }
  } finally {
    closeSync(fd);
  }
  return { found, bytesRead };
}
