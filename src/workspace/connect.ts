import { connect, type Socket } from 'node:net';
import { dirname, basename } from 'node:path';

/**
 * Connects to a unix socket. Socket paths are limited to 107 bytes on Linux,
 * and a workspace folder under a deep `$CS_HOME` can be longer; then the
 * connection is made relative to the socket's folder (connect(2) resolves a
 * relative path against the cwd, read synchronously when the call is made).
 */
export function connectUnix(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    let socket: Socket;
    if (Buffer.byteLength(path) <= 100) {
      socket = connect(path);
    } else {
      const cwd = process.cwd();
      process.chdir(dirname(path));
      try {
        socket = connect(basename(path));
      } finally {
        process.chdir(cwd);
      }
    }
    socket.once('connect', () => {
      socket.removeListener('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}
