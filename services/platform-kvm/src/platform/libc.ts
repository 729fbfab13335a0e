/**
 * The few libc calls the platform needs beyond src/kvm/ioctl.ts: pread(2) (reads a memfd without
 * allocating pages for holes) and lseek(2) with SEEK_DATA/SEEK_HOLE (which pages of a memfd hold
 * data). Bound through koffi like the rest of the native layer.
 */
import * as koffi from 'koffi';
import { SysError, errno } from '../kvm/ioctl';

const libc = koffi.load('libc.so.6');
const c_pread = libc.func('pread', 'int64_t', ['int', 'void *', 'size_t', 'int64_t']);
const c_lseek = libc.func('lseek', 'int64_t', ['int', 'int64_t', 'int']);

export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;
const ENXIO = 6;

/** pread(2) until `buf` is full (a memfd never returns short reads inside its size). */
export function sysPread(fd: number, buf: Buffer, offset: number): void {
  let done = 0;
  while (done < buf.length) {
    const chunk = done === 0 ? buf : buf.subarray(done);
    const n = Number(c_pread(fd, chunk, chunk.length, offset + done));
    if (n < 0) throw new SysError('pread', errno());
    if (n === 0) {
      buf.fill(0, done); // past EOF reads as zeros (cannot happen inside the memfd's size)
      return;
    }
    done += n;
  }
}

/** lseek(fd, offset, SEEK_DATA / SEEK_HOLE); undefined when there is no more data (ENXIO). */
export function sysSeek(fd: number, offset: number, whence: typeof SEEK_DATA | typeof SEEK_HOLE): number | undefined {
  const r = Number(c_lseek(fd, offset, whence));
  if (r < 0) {
    const e = errno();
    if (e === ENXIO) return undefined;
    throw new SysError('lseek', e);
  }
  return r;
}
