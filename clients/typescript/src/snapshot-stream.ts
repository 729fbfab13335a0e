// @vsm/client: the streaming snapshot RPCs (ExportPartition: server stream; ImportPartition: client
// stream) as an async iterator and a function that sends an iterable, both with back-pressure: an
// export is read only as fast as the caller consumes it, an import sends only as fast as the server
// takes it, so neither side holds more than a few chunks whatever the partition size.
import * as grpc from '@grpc/grpc-js';
import { pb } from '@vsm/api';

export interface SnapshotStreams {
  /** ExportPartition as an async iterator of its chunks; break out of the loop (or abort) to cancel. */
  exportPartition(req: Partial<pb.ExportPartitionRequest>, signal?: AbortSignal): AsyncIterable<pb.SnapshotChunk>;
  /**
   * ImportPartition: sends `chunks` (one or more ExportPartition streams back to back: a full snapshot,
   * then its incremental ones in order) and resolves with the new partition.
   */
  importPartition(
    chunks: AsyncIterable<pb.SnapshotChunk> | Iterable<pb.SnapshotChunk>,
    opts?: { partitionId?: string; signal?: AbortSignal },
  ): Promise<pb.Partition>;
}

type ErrorOf = (e: grpc.ServiceError) => Error;

/** Messages of an export read from the connection before the caller takes them. */
export const EXPORT_READ_AHEAD = 2;

export function snapshotStreams(client: pb.SnapshotServiceClient, md: () => grpc.Metadata, errorOf: ErrorOf): SnapshotStreams {
  return {
    async *exportPartition(req, signal) {
      const call = client.exportPartition(pb.ExportPartitionRequest.fromPartial(req), md());
      // grpc-js's object-mode Readable reads ahead 16 messages (16 MiB of RAM chunks) before the
      // caller asks: a relay (vsm-service --backend agent, MigratePartition) then holds them long
      // enough for V8 to promote their buffers, freed late. Two are enough to keep the pipe busy.
      // (Node's Readable has no public setter for it; `_readableState.highWaterMark` is read per _read.)
      const state = (call as unknown as { _readableState?: { highWaterMark: number } })._readableState;
      if (state && state.highWaterMark > EXPORT_READ_AHEAD) state.highWaterMark = EXPORT_READ_AHEAD;
      const onAbort = () => call.cancel();
      signal?.addEventListener('abort', onAbort, { once: true });
      try {
        for await (const m of call as AsyncIterable<pb.SnapshotChunk>) yield m;
      } catch (e) {
        const se = e as grpc.ServiceError;
        if (se.code === grpc.status.CANCELLED && signal?.aborted) return;
        throw typeof se.code === 'number' ? errorOf(se) : e;
      } finally {
        signal?.removeEventListener('abort', onAbort);
        call.cancel();
      }
    },
    importPartition(chunks, opts = {}) {
      return new Promise<pb.Partition>((resolve, reject) => {
        let settled = false;
        let answered = () => {};
        const answer = new Promise<void>((res) => {
          answered = res;
        });
        const call = client.importPartition(md(), (err, res) => {
          settled = true;
          answered();
          if (err) reject(errorOf(err));
          else resolve(res);
        });
        // The same for what is sent: grpc-js's object-mode Writable buffers 16 messages before write()
        // says to wait; two keep the pipe busy (`_writableState.highWaterMark`, see EXPORT_READ_AHEAD).
        const ws = (call as unknown as { _writableState?: { highWaterMark: number } })._writableState;
        if (ws && ws.highWaterMark > EXPORT_READ_AHEAD) ws.highWaterMark = EXPORT_READ_AHEAD;
        const onAbort = () => call.cancel();
        opts.signal?.addEventListener('abort', onAbort, { once: true });
        void (async () => {
          let first = true;
          try {
            for await (const chunk of chunks) {
              if (settled) return; // the server answered (refused) early
              const ok = call.write({ partitionId: first ? (opts.partitionId ?? '') : '', chunk });
              first = false;
              if (!ok) await Promise.race([new Promise<void>((res) => call.once('drain', res)), answer]);
            }
            call.end();
          } catch (e) {
            // The source failed (e.g. a file could not be read): cancel, so nothing is created.
            call.cancel();
            if (!settled) {
              settled = true;
              reject(e);
            }
          } finally {
            opts.signal?.removeEventListener('abort', onAbort);
          }
        })();
      });
    },
  };
}

// ---- snapshot files ---------------------------------------------------------------------------
// A snapshot file is the SnapshotChunk messages of one or more ExportPartition streams, each preceded
// by its length as a protobuf varint (the "length-delimited" framing of protobuf's writeDelimitedTo),
// after an 8-byte magic. Written and read a chunk at a time: memory stays bounded whatever the size.

/** The first bytes of a snapshot file. */
export const SNAPSHOT_FILE_MAGIC = Buffer.from('VSMSNAP1');
/** Largest chunk a reader accepts (a chunk carries at most 1 MiB of RAM). */
const MAX_FILE_CHUNK = 8 * 1024 * 1024;

function varint(n: number): Buffer {
  const out: number[] = [];
  let v = n;
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
  return Buffer.from(out);
}

/** Frames one chunk for a snapshot file. */
export function frameSnapshotChunk(c: pb.SnapshotChunk): Buffer[] {
  const body = Buffer.from(pb.SnapshotChunk.encode(c).finish());
  return [varint(body.length), body];
}

/** Writes `chunks` to `path` (created or truncated) as a snapshot file; resolves once it is on disk (fsync). */
export async function writeSnapshotFile(path: string, chunks: AsyncIterable<pb.SnapshotChunk> | Iterable<pb.SnapshotChunk>, append = false): Promise<number> {
  const fs = await import('node:fs/promises');
  const fh = await fs.open(path, append ? 'a' : 'w');
  let n = 0;
  try {
    if (!append || (await fh.stat()).size === 0) await fh.write(SNAPSHOT_FILE_MAGIC);
    for await (const c of chunks) {
      // FileHandle.writev loops until every byte is written (or throws: ENOSPC, EIO).
      await fh.writev(frameSnapshotChunk(c));
      n++;
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
  return n;
}

/** The chunks of a snapshot file (or several, in order), read a chunk at a time; a damaged file throws naming the offset. */
export async function* readSnapshotFiles(paths: readonly string[]): AsyncIterable<pb.SnapshotChunk> {
  const fs = await import('node:fs/promises');
  for (const path of paths) {
    const fh = await fs.open(path, 'r');
    try {
      let pos = 0;
      const read = async (n: number): Promise<Buffer | undefined> => {
        const b = Buffer.alloc(n);
        let got = 0;
        while (got < n) {
          const { bytesRead } = await fh.read(b, got, n - got, pos + got);
          if (bytesRead === 0) break;
          got += bytesRead;
        }
        if (got === 0) return undefined;
        if (got < n) throw new Error(`${path}: truncated at byte ${pos + got} (wanted ${n - got} more bytes)`);
        pos += n;
        return b;
      };
      const magic = await read(SNAPSHOT_FILE_MAGIC.length);
      if (!magic?.equals(SNAPSHOT_FILE_MAGIC)) throw new Error(`${path}: not a vsm snapshot file (no ${SNAPSHOT_FILE_MAGIC} header)`);
      for (;;) {
        let len = 0;
        let mul = 1;
        const at = pos;
        for (let i = 0; ; i++) {
          const b = await read(1);
          if (!b) {
            if (i === 0) break;
            throw new Error(`${path}: truncated inside a length at byte ${at}`);
          }
          len += (b[0]! & 0x7f) * mul;
          mul *= 0x80;
          if ((b[0]! & 0x80) === 0) break;
          if (i > 4) throw new Error(`${path}: bad length at byte ${at}`);
        }
        if (pos === at) break; // end of file
        if (len > MAX_FILE_CHUNK) throw new Error(`${path}: a chunk of ${len} bytes at byte ${at} is larger than any export writes`);
        const body = await read(len);
        if (!body) throw new Error(`${path}: truncated: the chunk at byte ${at} is missing`);
        let c: pb.SnapshotChunk;
        try {
          c = pb.SnapshotChunk.decode(body);
        } catch (e) {
          throw new Error(`${path}: the chunk at byte ${at} does not decode: ${e instanceof Error ? e.message : String(e)}`);
        }
        yield c;
      }
    } finally {
      await fh.close();
    }
  }
}
