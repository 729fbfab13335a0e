// Test support: a loopback port for a server a test starts itself on a port it must know in advance
// (etcd members, a server restarted on the same address).
//
// Why not "listen on port 0, close, reuse the number": Linux hands out port-0 binds from the
// ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 here), so between the close and the
// server's own bind, any other test process that listens on port 0 or opens an outgoing connection
// can take the same number (seen in CI: an etcd member failing with "bind: address already in use").
// Ports below the ephemeral range are never handed out implicitly; the only risk left is another
// test choosing the same random number in the same moment, which the bind check makes unlikely.
import * as fs from 'node:fs';
import * as net from 'node:net';

const DEFAULT_EPHEMERAL_LOW = 32768;

function ephemeralLow(): number {
  try {
    const [low] = fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    return low && low > 11000 ? low : DEFAULT_EPHEMERAL_LOW;
  } catch {
    return DEFAULT_EPHEMERAL_LOW;
  }
}

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** A free 127.0.0.1 port below the ephemeral range (10000 up to it), chosen at random and checked by binding it. */
export async function freePort(): Promise<number> {
  const high = ephemeralLow();
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 10000 + Math.floor(Math.random() * (high - 10000));
    if (await bindable(port)) return port;
  }
  throw new Error('no free loopback port found below the ephemeral range after 200 tries');
}
