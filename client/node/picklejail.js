'use strict';
/**
 * picklejail client for Node.js: asks picklejaild (docs/protocol.md, protocol v1) to
 * convert an untrusted PyTorch checkpoint and returns its tensors. No dependencies.
 *
 * Node cannot send or receive file descriptors over a Unix socket, so this client
 * always sends path requests ("path": absolute; the daemon opens the file with the
 * caller's uid, gid and groups) and receives the image through the `shm` transport
 * (a POSIX shared-memory object read from /dev/shm, then released) or the `inline`
 * transport (the bytes follow the reply line on the socket). Either way the image is
 * read once into private memory and validated as safetensors before any tensor is
 * handed out; tensor data are views (Buffer.subarray) into that one buffer.
 *
 *   const pj = require('./picklejail');
 *   const { tensors, metadata } = await pj.load('/models/model.pt', { transport: 'shm' });
 *   for (const [name, t] of tensors) console.log(name, t.dtype, t.shape, t.data.length);
 */

const buffer = require('buffer');
const fs = require('fs');
const net = require('net');
const os = require('os');
const pathModule = require('path');

const DEFAULT_SOCKET = '/run/picklejail/picklejail.sock';
const ENV_SOCKET = 'PICKLEJAIL_SOCKET';
const TRANSPORTS = ['shm', 'inline'];
const MAX_REQUEST_LINE = 65536; // including the newline: the daemon's limit
// Replies have no documented cap (an inspect listing grows with the tensor count);
// this only bounds what a misbehaving daemon can make us buffer.
const MAX_REPLY_LINE = 256 * 1024 * 1024;
const MAX_HEADER = 100 * 1024 * 1024; // the reference safetensors implementation's limit
const SHM_DIR = '/dev/shm';
const SHM_NAME = /^[A-Za-z0-9_.-]{1,255}$/;
const POLICY_NAME = /^[A-Za-z0-9_-]{1,64}$/;

/** safetensors dtype -> element size in bytes (what picklejail writes; docs/output-format.md). */
const DTYPE_SIZES = Object.freeze({
  BOOL: 1, U8: 1, I8: 1, I16: 2, U16: 2, I32: 4, U32: 4, I64: 8, U64: 8,
  F16: 2, BF16: 2, F32: 4, F64: 8, C64: 8,
  F8_E4M3: 1, F8_E5M2: 1, F8_E4M3FNUZ: 1, F8_E5M2FNUZ: 1,
});

/**
 * Every failure: `code` is a protocol error code ("forbidden_global", "malformed", ...),
 * or one of the client-side codes "protocol_error" (the daemon's reply broke protocol v1),
 * "unavailable" (no daemon answered at the socket path). `global` is set when the daemon's
 * error names one (error.global).
 */
class PicklejailError extends Error {
  constructor(code, message, extra) {
    super(message);
    this.name = 'PicklejailError';
    this.code = code;
    if (extra && extra.global !== undefined) this.global = extra.global;
  }

  toString() {
    return `${this.name}: ${this.code}: ${this.message}`;
  }
}

function fail(code, message, extra) {
  throw new PicklejailError(code, message, extra);
}

function isCount(value) {
  return Number.isSafeInteger(value) && value >= 0;
}

function socketPath(explicit) {
  if (explicit !== undefined && explicit !== null) return String(explicit);
  return process.env[ENV_SOCKET] || DEFAULT_SOCKET;
}

// ------------------------------------------------------------------ the connection

/**
 * One connection to picklejaild. Requests go one at a time (each method waits for its
 * reply); the incoming stream is buffered as a list of chunks, so a reply line and the
 * inline bytes after it may arrive split or together in any chunking.
 */
class Client {
  constructor(sock, path, timeout) {
    this._sock = sock;
    this._path = path;
    this._chunks = []; // received, not yet consumed; _chunks[0] starts at the stream position
    this._length = 0;
    this._scanned = 0; // leading chunks known to hold no newline
    this._waiter = null;
    this._closedError = null;
    this._queue = Promise.resolve(); // operations run one after another
    this._nextId = 1;
    sock.on('data', (chunk) => {
      this._chunks.push(chunk);
      this._length += chunk.length;
      this._pump();
    });
    const closed = (err, code) => {
      if (!this._closedError) {
        this._closedError = new PicklejailError(code || 'protocol_error', err
          ? `connection to ${path} failed: ${err.message}`
          : `the daemon closed the connection (${path})`);
      }
      this._pump();
    };
    sock.on('error', closed);
    sock.on('end', () => closed(null));
    sock.on('close', () => closed(null));
    this._timeout = timeout || 0; // armed only while a reply is awaited
    sock.on('timeout', () => {
      closed(new Error(`nothing from the daemon for ${this._timeout} ms`), 'timeout');
      sock.destroy();
    });
  }

  /** Connect to `opts.socket`, else $PICKLEJAIL_SOCKET, else /run/picklejail/picklejail.sock. */
  static connect(opts) {
    const o = opts || {};
    const path = socketPath(o.socket);
    return new Promise((resolve, reject) => {
      const sock = net.createConnection({ path });
      const onError = (err) => {
        sock.destroy();
        reject(new PicklejailError('unavailable', `cannot connect to picklejaild at ${path}: ` +
          `${err.code || err.message}`));
      };
      sock.once('error', onError);
      sock.once('connect', () => {
        sock.removeListener('error', onError);
        resolve(new Client(sock, path, o.timeout));
      });
    });
  }

  close() {
    this._sock.destroy();
  }

  // ---------------------------------------------------------------- stream reading

  _pump() {
    const w = this._waiter;
    if (!w) return;
    let done;
    try {
      done = w.kind === 'line' ? this._takeLine() : this._takeBytes(w);
    } catch (err) {
      this._settle().reject(err);
      return;
    }
    if (done !== null) this._settle().resolve(done);
    else if (this._closedError) this._settle().reject(this._closedError);
  }

  _settle() {
    const w = this._waiter;
    this._waiter = null;
    if (this._timeout) this._sock.setTimeout(0);
    return w;
  }

  _takeLine() {
    for (; this._scanned < this._chunks.length; this._scanned++) {
      const chunk = this._chunks[this._scanned];
      const nl = chunk.indexOf(0x0a);
      if (nl < 0) continue;
      const parts = this._chunks.slice(0, this._scanned);
      parts.push(chunk.subarray(0, nl));
      const line = Buffer.concat(parts);
      const rest = this._chunks.slice(this._scanned + 1);
      if (nl + 1 < chunk.length) rest.unshift(chunk.subarray(nl + 1));
      this._chunks = rest;
      this._length -= line.length + 1;
      this._scanned = 0;
      return line;
    }
    if (this._length > MAX_REPLY_LINE) {
      fail('protocol_error', `reply line longer than ${MAX_REPLY_LINE} bytes`);
    }
    return null;
  }

  _takeBytes(w) {
    while (w.filled < w.target.length && this._chunks.length) {
      const chunk = this._chunks[0];
      const n = Math.min(chunk.length, w.target.length - w.filled);
      chunk.copy(w.target, w.filled, 0, n);
      w.filled += n;
      this._length -= n;
      if (n === chunk.length) this._chunks.shift();
      else this._chunks[0] = chunk.subarray(n);
    }
    this._scanned = 0;
    if (w.filled === w.target.length) return w.target;
    if (this._closedError) {
      fail('protocol_error', `the connection closed after ${w.filled} of ${w.target.length} ` +
        'inline bytes');
    }
    return null;
  }

  _wait(waiter) {
    return new Promise((resolve, reject) => {
      waiter.resolve = resolve;
      waiter.reject = reject;
      this._waiter = waiter;
      if (this._timeout && !this._closedError) this._sock.setTimeout(this._timeout);
      this._pump();
    });
  }

  _readLine() {
    return this._wait({ kind: 'line' });
  }

  /** The next `size` stream bytes, in a buffer of their own (byteOffset 0, so aligned). */
  _readBytes(size) {
    return this._wait({ kind: 'bytes', target: allocImage(size), filled: 0 });
  }

  // ---------------------------------------------------------------- requests

  /** Run `fn` after every operation queued before it (one request, and its bytes, at a time). */
  _serial(fn) {
    const run = this._queue.then(fn);
    this._queue = run.catch(() => {});
    return run;
  }

  /** Send one request and return its ok reply; an error reply rejects with PicklejailError. */
  request(fields) {
    return this._serial(() => this._request(fields));
  }

  async _request(fields) {
    if (this._closedError) throw this._closedError;
    const id = this._nextId++;
    const line = Buffer.from(JSON.stringify({ ...fields, id }) + '\n', 'utf8');
    if (line.length > MAX_REQUEST_LINE) {
      fail('invalid_request', `request of ${line.length} bytes exceeds the protocol's ` +
        `${MAX_REQUEST_LINE}-byte line limit`);
    }
    this._sock.write(line);
    const raw = await this._readLine();
    let reply;
    try {
      reply = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(raw));
    } catch (err) {
      fail('protocol_error', `reply is not a JSON line: ${err.message}`);
    }
    if (reply === null || typeof reply !== 'object' || Array.isArray(reply)) {
      fail('protocol_error', 'reply is not a JSON object');
    }
    if ('id' in reply && reply.id !== id) {
      fail('protocol_error', `reply to request ${JSON.stringify(reply.id)} while waiting ` +
        `for ${id}`);
    }
    if (reply.ok === true) return reply;
    const error = reply.ok === false ? reply.error : undefined;
    if (!error || typeof error !== 'object' || typeof error.code !== 'string' ||
        typeof error.message !== 'string') {
      fail('protocol_error', `reply is neither ok nor an error: ${raw.toString('utf8', 0, 300)}`);
    }
    const extra = typeof error.global === 'string' ? { global: error.global } : undefined;
    throw new PicklejailError(error.code, error.message, extra);
  }

  async ping() {
    return strip(await this.request({ op: 'ping' }));
  }

  async stats() {
    return strip(await this.request({ op: 'stats' })).stats;
  }

  async release(shmName) {
    return strip(await this.request({ op: 'release', shm_name: shmName }));
  }

  /** The inspect report: the reply without "ok" and "id". */
  async inspect(path, opts) {
    const fields = jobFields('inspect', path, opts || {});
    return strip(await this.request(fields));
  }

  /** Load a checkpoint; resolves to the validated image (see parseImage) plus `reply`. */
  async load(path, opts) {
    const fields = loadFields(path, opts || {});
    return this._serial(() => this._load(fields));
  }

  async _load(fields) {
    const { transport } = fields;
    const reply = await this._request(fields);
    let image;
    if (transport === 'shm') {
      image = await this._fetchShm(reply);
    } else {
      try {
        image = await this._readBytes(checkReply(reply, transport));
      } catch (err) {
        this.close(); // the stream is out of step: where the next reply starts is unknown
        throw err;
      }
    }
    const result = parseImage(image);
    result.reply = strip(reply);
    return result;
  }

  async _fetchShm(reply) {
    const name = reply.shm_name;
    if (typeof name !== 'string' || !SHM_NAME.test(name) || name === '.' || name === '..') {
      fail('protocol_error', `bad shm_name ${JSON.stringify(name)}`);
    }
    try {
      const size = checkReply(reply, 'shm');
      // What shm_open(name) opens on Linux; never a path the reply chose.
      const path = `${SHM_DIR}/${name}`;
      if (reply.shm_path !== undefined && reply.shm_path !== path) {
        fail('protocol_error', `shm_path ${JSON.stringify(reply.shm_path)} is not ${path}`);
      }
      return await readShm(path, size);
    } finally {
      await this._request({ op: 'release', shm_name: name }).catch((err) => {
        // The image is already ours (or the load failed); the object goes away after ttl_s.
        process.emitWarning(`picklejail: releasing shm object ${name} failed: ${err.message}`);
      });
    }
  }
}

function strip(reply) {
  const out = { ...reply };
  delete out.ok;
  delete out.id;
  return out;
}

function jobFields(op, path, o) {
  if (typeof path !== 'string' || path === '' || path.includes('\0')) {
    fail('invalid_request', 'path must be a non-empty string');
  }
  const fields = { op, path: pathModule.resolve(path) };
  if (o.policy !== undefined && o.policy !== null) {
    if (typeof o.policy !== 'string' || !POLICY_NAME.test(o.policy)) {
      fail('invalid_request', `bad policy name ${JSON.stringify(o.policy)}`);
    }
    fields.policy = o.policy;
  }
  if (o.select !== undefined && o.select !== null) {
    const select = typeof o.select === 'string' ? [o.select] : o.select;
    if (!Array.isArray(select) || !select.every((s) => typeof s === 'string')) {
      fail('invalid_request', 'select must be a string or an array of strings');
    }
    fields.select = [...select];
  }
  return fields;
}

function loadFields(path, o) {
  const transport = o.transport === undefined || o.transport === null ? 'shm' : o.transport;
  if (transport === 'memfd') {
    fail('invalid_request', 'the memfd transport needs fd passing, which Node cannot do; ' +
      'use "shm" or "inline"');
  }
  if (!TRANSPORTS.includes(transport)) {
    fail('invalid_request', 'transport must be "shm" or "inline", not ' +
      `${JSON.stringify(transport)}`);
  }
  const fields = jobFields('load', path, o);
  fields.transport = transport;
  return fields;
}

function checkReply(reply, transport) {
  if (!isCount(reply.size)) {
    fail('protocol_error', `reply size ${JSON.stringify(reply.size)} is not a byte count`);
  }
  if (reply.transport !== undefined && reply.transport !== transport) {
    fail('protocol_error', `asked for transport ${transport}, the reply says ` +
      `${JSON.stringify(reply.transport)}`);
  }
  return reply.size;
}

function allocImage(size) {
  if (size > buffer.constants.MAX_LENGTH) {
    fail('too_large', `a ${size}-byte image does not fit a Node Buffer`);
  }
  // Not from the shared pool: the image owns its ArrayBuffer, so tensor views keep
  // the writer's alignment. Every byte is overwritten before use.
  return Buffer.allocUnsafeSlow(size);
}

/**
 * Copy a shm object into private memory. It cannot be sealed (it could change or shrink
 * under a mapping), and Node cannot map files anyway, so it is read once.
 */
async function readShm(path, size) {
  let fh;
  try {
    fh = await fs.promises.open(path, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch (err) {
    fail('protocol_error', `cannot open ${path}: ${err.code || err.message}`);
  }
  try {
    const st = await fh.stat();
    const euid = typeof process.geteuid === 'function' ? process.geteuid() : st.uid;
    if (!st.isFile() || st.uid !== euid || (st.mode & 0o077) !== 0) {
      fail('protocol_error', `${path} is not a mode 0600 shm object owned by us`);
    }
    if (st.size !== size) {
      fail('protocol_error', `${path} holds ${st.size} bytes, the reply said ${size}`);
    }
    const image = allocImage(size);
    let done = 0;
    while (done < size) {
      const { bytesRead } = await fh.read(image, done, Math.min(size - done, 1 << 30), done);
      if (bytesRead === 0) fail('protocol_error', `${path} shrank to ${done} bytes while read`);
      done += bytesRead;
    }
    return image;
  } finally {
    await fh.close();
  }
}

// ------------------------------------------------------------------ the image

const UTF8 = new TextDecoder('utf-8', { fatal: true });
// __metadata__ keys that are not aliases: docs/output-format.md, and two more picklejail writes.
const METADATA_KEYS = new Set(['format', 'picklejail.source_format', 'picklejail.object',
  'picklejail.complex128', 'picklejail.globals', 'picklejail.pickle_protocol']);

function isPlainObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function malformed(message) {
  fail('malformed', `invalid safetensors image: ${message}`);
}

/**
 * Validate a safetensors image and return
 *   { tensors: Map name -> {dtype, shape, data, complex128?}, aliases: Map alias -> stored name,
 *     metadata: {__metadata__ strings}, object: parsed picklejail.object or undefined, image,
 *     get(name): a tensor by stored or alias name }
 * `data` is a view into `image` (no copy). The Map is in data-section order. Anything that
 * breaks the format (docs/output-format.md) rejects with code "malformed".
 */
function parseImage(image) {
  if (!Buffer.isBuffer(image)) {
    image = Buffer.from(image.buffer, image.byteOffset, image.byteLength);
  }
  if (image.length < 8) malformed('shorter than the 8-byte header length');
  const n64 = image.readBigUInt64LE(0);
  if (n64 > BigInt(MAX_HEADER) || n64 > BigInt(image.length - 8)) {
    malformed(`header length ${n64} does not fit the image (${image.length} bytes)`);
  }
  const n = Number(n64);
  let header;
  try {
    header = JSON.parse(UTF8.decode(image.subarray(8, 8 + n)));
  } catch (err) {
    malformed(`header is not UTF-8 JSON: ${err.message}`);
  }
  if (!isPlainObject(header)) malformed('header is not a JSON object');
  const dataStart = 8 + n;
  const dataLength = image.length - dataStart;

  let metadata = {};
  if (Object.prototype.hasOwnProperty.call(header, '__metadata__')) {
    metadata = header.__metadata__;
    if (!isPlainObject(metadata) || !Object.values(metadata).every((v) => typeof v === 'string')) {
      malformed('__metadata__ must map strings to strings');
    }
  }

  const spans = [];
  for (const name of Object.keys(header)) {
    if (name === '__metadata__') continue;
    const info = header[name];
    const keys = isPlainObject(info) ? Object.keys(info).sort().join(',') : '';
    if (keys !== 'data_offsets,dtype,shape') {
      malformed(`${name}: entry must have exactly dtype, shape and data_offsets`);
    }
    const { dtype, shape, data_offsets: offsets } = info;
    if (typeof dtype !== 'string' || !Object.prototype.hasOwnProperty.call(DTYPE_SIZES, dtype)) {
      malformed(`${name}: unknown dtype ${JSON.stringify(dtype)}`);
    }
    if (!Array.isArray(shape) || !shape.every(isCount)) {
      malformed(`${name}: shape must be an array of non-negative integers`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
      malformed(`${name}: data_offsets must be two non-negative integers`);
    }
    const [begin, end] = offsets;
    if (!(begin <= end && end <= dataLength)) {
      malformed(`${name}: data_offsets [${begin}, ${end}] outside the ${dataLength}-byte ` +
        'data section');
    }
    let numel = 1n;
    for (const d of shape) numel *= BigInt(d);
    if (BigInt(end - begin) !== numel * BigInt(DTYPE_SIZES[dtype])) {
      malformed(`${name}: ${end - begin} bytes for ${dtype}[${shape.join(',')}]`);
    }
    spans.push({ name, dtype, shape, begin, end });
  }

  // The data section must be indexed fully, without holes or overlaps.
  spans.sort((a, b) => (a.begin - b.begin) || (a.end - b.end));
  let pos = 0;
  for (const s of spans) {
    if (s.begin !== pos) {
      malformed(`${s.name}: starts at ${s.begin}, expected ${pos} (a hole or an overlap)`);
    }
    pos = s.end;
  }
  if (pos !== dataLength) malformed(`${dataLength - pos} bytes after the last tensor`);

  const tensors = new Map();
  for (const s of spans) {
    tensors.set(s.name, {
      dtype: s.dtype,
      shape: s.shape,
      data: image.subarray(dataStart + s.begin, dataStart + s.end),
    });
  }

  // complex128 is stored as F64 with a trailing dimension of 2.
  if (metadata['picklejail.complex128'] !== undefined) {
    let names;
    try {
      names = JSON.parse(metadata['picklejail.complex128']);
    } catch (err) {
      malformed(`picklejail.complex128 is not JSON: ${err.message}`);
    }
    if (!Array.isArray(names)) malformed('picklejail.complex128 is not an array');
    for (const name of names) {
      const t = typeof name === 'string' ? tensors.get(name) : undefined;
      if (!t || t.dtype !== 'F64' || t.shape[t.shape.length - 1] !== 2) {
        malformed(`picklejail.complex128 names ${JSON.stringify(name)}, ` +
          'not an F64 tensor [..., 2]');
      }
      t.complex128 = true;
    }
  }

  // Every other key is an alias: alias -> stored name (a tensor may itself be called
  // "picklejail.something", so that prefix alone does not rule an alias out). A
  // picklejail.* key this client does not know, whose value names no tensor, is
  // metadata from a later version and is ignored.
  const aliases = new Map();
  for (const [key, value] of Object.entries(metadata)) {
    if (METADATA_KEYS.has(key)) continue;
    if (tensors.has(value) && !tensors.has(key)) {
      aliases.set(key, value);
    } else if (!key.startsWith('picklejail.')) {
      malformed(`alias ${JSON.stringify(key)} -> ${JSON.stringify(value)} does not name ` +
        'one stored tensor');
    }
  }

  let object;
  if (metadata['picklejail.object'] !== undefined) {
    try {
      object = JSON.parse(metadata['picklejail.object']);
    } catch (err) {
      malformed(`picklejail.object is not JSON: ${err.message}`);
    }
  }

  return {
    tensors,
    aliases,
    metadata,
    object,
    image,
    /** A tensor by its stored name or an alias (tied weights give back the same object). */
    get(name) {
      return tensors.get(name) || tensors.get(aliases.get(name));
    },
  };
}

// ------------------------------------------------------------------ typed arrays

const TYPED = {
  BOOL: Uint8Array, U8: Uint8Array, I8: Int8Array, I16: Int16Array, U16: Uint16Array,
  I32: Int32Array, U32: Uint32Array, I64: BigInt64Array, U64: BigUint64Array,
  F32: Float32Array, F64: Float64Array, C64: Float32Array, // C64: interleaved (re, im)
};

/**
 * A flat typed array over a tensor's data (a view when aligned, else a copy), or null for
 * dtypes JavaScript has no array for (F16, BF16, F8_*: read their bits with `data`).
 * Assumes a little-endian host, as the image is little-endian.
 */
function typedArray(tensor) {
  const Ctor = TYPED[tensor.dtype];
  if (!Ctor) return null;
  if (os.endianness() !== 'LE') fail('unsupported', 'typedArray needs a little-endian host');
  let d = tensor.data;
  if (d.byteOffset % Ctor.BYTES_PER_ELEMENT !== 0) d = Buffer.from(d); // a copy at offset 0
  return new Ctor(d.buffer, d.byteOffset, d.byteLength / Ctor.BYTES_PER_ELEMENT);
}

// ------------------------------------------------------------------ one-shot calls

async function withClient(opts, fn) {
  const client = await Client.connect(opts);
  try {
    return await fn(client);
  } finally {
    client.close();
  }
}

/**
 * Load a checkpoint through picklejaild.
 * opts: { socket, policy, transport: "shm" (default) | "inline", select: [names or prefixes],
 *         timeout: idle milliseconds before giving up (default: none) }
 */
async function load(path, opts) {
  loadFields(path, opts || {}); // a bad argument fails before connecting
  return withClient(opts, (c) => c.load(path, opts));
}

/** What the checkpoint holds, without converting it. opts: { socket, policy, select, timeout }. */
async function inspect(path, opts) {
  jobFields('inspect', path, opts || {});
  return withClient(opts, (c) => c.inspect(path, opts));
}

/** {version, protocol} of the daemon. opts: { socket, timeout }. */
function ping(opts) {
  return withClient(opts, (c) => c.ping());
}

module.exports = {
  load,
  inspect,
  ping,
  parseImage,
  typedArray,
  Client,
  PicklejailError,
  DTYPE_SIZES,
  DEFAULT_SOCKET,
  socketPath,
};
