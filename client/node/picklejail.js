'use strict';
/**
 * picklejail client for Node.js: asks picklejaild (docs/protocol.md, protocol v1) to
 * convert an untrusted PyTorch checkpoint and returns its tensors. No dependencies.
 *
 * Node's public API cannot send or receive file descriptors over a Unix socket, so this
 * client sends path requests ("path": absolute; the daemon opens the file with the
 * caller's uid, gid and groups), except mmap loads, which send the file's fd through Node
 * internals (see "passing an fd"). It receives the image through the `shm` transport
 * (a POSIX shared-memory object read from /dev/shm, then released) or the `inline`
 * transport (the bytes follow the reply line on the socket). Either way the image is
 * read once into private memory and validated as safetensors before any tensor is
 * handed out; tensor data are views (Buffer.subarray) into that one buffer.
 * objectTree() rebuilds the image's object description into JS values.
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
const util = require('util');

const { promisify } = util;

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
    this._fdPassing = false; // set by connect() for a connection that can send fds
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

  /**
   * Connect to `opts.socket`, else $PICKLEJAIL_SOCKET, else /run/picklejail/picklejail.sock.
   * `opts.fdPassing` (or `opts.mmap`): a connection that can send fds, which mmap loads need.
   */
  static async connect(opts) {
    const o = opts || {};
    const path = socketPath(o.socket);
    if (o.fdPassing || o.mmap) {
      const client = new Client(await connectFdCapable(path), path, o.timeout);
      client._fdPassing = true;
      return client;
    }
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

  /** `passing`: a pipe handle (openForPassing) whose fd goes with the line. */
  async _request(fields, passing) {
    if (this._closedError) throw this._closedError;
    const id = this._nextId++;
    const text = JSON.stringify({ ...fields, id }) + '\n';
    const line = Buffer.from(text, 'utf8');
    if (line.length > MAX_REQUEST_LINE) {
      fail('invalid_request', `request of ${line.length} bytes exceeds the protocol's ` +
        `${MAX_REQUEST_LINE}-byte line limit`);
    }
    if (passing) this._writePassing(text, passing);
    else this._sock.write(line);
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

  /**
   * Write `text` with the fd of `passing` attached (SCM_RIGHTS, with the line's first
   * bytes, as the protocol asks). Writes on one handle go out in order, so this cannot
   * overtake an earlier socket.write.
   */
  _writePassing(text, passing) {
    const { WriteWrap } = needFdPassing();
    const handle = this._sock._handle;
    if (!this._fdPassing || !handle) {
      fail('unsupported', 'this connection cannot pass fds: connect with { fdPassing: true }');
    }
    const req = new WriteWrap();
    req.handle = handle;
    req.oncomplete = (status) => {
      if (status < 0) this._sock.destroy(new Error(`sending the request: ${util.getSystemErrorName(status)}`));
    };
    const err = handle.writeUtf8String(req, text, passing);
    if (err < 0) fail('protocol_error', `sending the request failed: ${util.getSystemErrorName(err)}`);
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
    if (!fields.mmap) return this._receive(fields, await this._request(fields));
    if (!this._fdPassing) {
      fail('unsupported', 'mmap needs a connection that can pass fds: Client.connect({ fdPassing: true })');
    }
    const { fd, handle } = await openForPassing(fields.path);
    try {
      const sent = { ...fields, fd: true };
      delete sent.path; // the daemon reads the fd we send: the file we read ranges from
      const result = await this._receive(sent, await this._request(sent, handle));
      if (result.fileRanges) await readFileTensors(result, fd);
      return result;
    } finally {
      handle.close(); // closes fd
    }
  }

  /** The image of an ok load reply, validated (parseImage). */
  async _receive(fields, reply) {
    const { transport } = fields;
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
    if (result.fileRanges && !fields.mmap) {
      fail('protocol_error', `the image holds ${FILE_RANGES_KEY}, but mmap was not asked for`);
    }
    if (fields.select) result.select = fields.select; // objectTree: what select left out
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
  if (o.mmap !== undefined && o.mmap !== null && typeof o.mmap !== 'boolean') {
    fail('invalid_request', 'mmap must be true or false');
  }
  if (o.mmap) fields.mmap = true;
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
  'picklejail.complex128', 'picklejail.globals', 'picklejail.pickle_protocol',
  'picklejail.file_ranges']);

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
 *     fileRanges: null, or for a layout-only image {identity, entries: Map name -> range},
 *     get(name): a tensor by stored or alias name }
 * `data` is a view into `image` (no copy). The Map is in data-section order. Anything that
 * breaks the format (docs/output-format.md) rejects with code "malformed". The tensors of
 * `fileRanges` are checked here but only added to `tensors` by a load with `mmap`, which
 * reads them from its own fd (readFileTensors).
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

  // A layout-only image (an mmap load) names tensors left in the checkpoint file.
  const fileRanges = parseFileRanges(metadata, tensors);
  const layout = (name) => tensors.get(name) || (fileRanges && fileRanges.entries.get(name));

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
      const t = typeof name === 'string' ? layout(name) : undefined;
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
    if (layout(value) && !layout(key)) {
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
    fileRanges,
    /** A tensor by its stored name or an alias (tied weights give back the same object). */
    get(name) {
      return tensors.get(name) || tensors.get(aliases.get(name));
    },
  };
}

// ------------------------------------------------------------------ exact JSON

// One token after optional whitespace: punctuation, a string, a number (integer part,
// fraction, exponent) or a literal.
const JSON_TOKEN = new RegExp('[ \\t\\n\\r]*(?:([{}\\[\\],:])|("(?:[^"\\\\\\u0000-\\u001f]|\\\\.)*")|' +
  '(-?(?:0|[1-9][0-9]*))(\\.[0-9]+)?([eE][+-]?[0-9]+)?|(true|false|null))', 'y');
const JSON_TRAILER = /[ \t\n\r]*$/y;
const LITERALS = { true: true, false: false, null: null };

/** A string token's value: JSON.parse checks its escapes (lone surrogates it keeps). */
function jsonString(token, bad) {
  try {
    return JSON.parse(token);
  } catch (err) {
    return bad(err.message);
  }
}

/**
 * JSON.parse, except that an integer outside Number's exact range (±2^53) comes back as
 * a BigInt: file times in nanoseconds, inode numbers and 64-bit ints in the object
 * description would otherwise be rounded. Iterative, so no nesting depth can exhaust
 * the stack. Any error is `malformed`, naming `what`.
 */
function parseExactJson(text, what) {
  const bad = (why) => fail('malformed', `${what} is not valid JSON: ${why}`);
  const open = []; // containers not yet closed: { value, isArray, key }
  let expect = 'value'; // value | item (value or "]") | key | member (key or "}") | colon | next
  let result;
  let done = false;
  JSON_TOKEN.lastIndex = 0;
  const put = (value) => {
    const top = open[open.length - 1];
    if (!top) {
      result = value;
      done = true;
    } else if (top.isArray) {
      top.value.push(value);
    } else if (top.key === '__proto__') {
      Object.defineProperty(top.value, top.key, { value, enumerable: true, writable: true,
        configurable: true }); // a member, not the prototype
    } else {
      top.value[top.key] = value;
    }
    expect = 'next';
  };
  const close = (isArray) => {
    const top = open.pop();
    if (!top || top.isArray !== isArray) bad(`unexpected ${isArray ? ']' : '}'}`);
    put(top.value);
  };
  while (!done) {
    const at = JSON_TOKEN.lastIndex;
    const m = JSON_TOKEN.exec(text);
    if (!m) bad(`unexpected ${at < text.length ? 'character' : 'end'} at ${at}`);
    const [, punct, str, int, frac, exp, literal] = m;
    if (expect === 'colon') {
      if (punct !== ':') bad(`expected ":" at ${at}`);
      expect = 'value';
    } else if (expect === 'next') {
      const top = open[open.length - 1];
      if (punct === ',') expect = top.isArray ? 'value' : 'key';
      else if (punct === (top.isArray ? ']' : '}')) close(top.isArray);
      else bad(`expected "," or a closing bracket at ${at}`);
    } else if (expect === 'key' || expect === 'member') {
      if (punct === '}' && expect === 'member') {
        close(false);
      } else {
        if (str === undefined) bad(`expected a member name at ${at}`);
        open[open.length - 1].key = jsonString(str, bad);
        expect = 'colon';
      }
    } else if (punct === '{') {
      open.push({ value: {}, isArray: false, key: undefined });
      expect = 'member';
    } else if (punct === '[') {
      open.push({ value: [], isArray: true });
      expect = 'item';
    } else if (punct === ']' && expect === 'item') {
      close(true);
    } else if (str !== undefined) {
      put(jsonString(str, bad));
    } else if (int !== undefined) {
      const exact = frac === undefined && exp === undefined;
      const n = Number(exact ? int : int + (frac || '') + (exp || ''));
      put(exact && !Number.isSafeInteger(n) ? BigInt(int) : n);
    } else if (literal !== undefined) {
      put(LITERALS[literal]);
    } else {
      bad(`unexpected ${JSON.stringify(punct)} at ${at}`);
    }
  }
  JSON_TRAILER.lastIndex = JSON_TOKEN.lastIndex;
  JSON_TRAILER.exec(text);
  if (JSON_TRAILER.lastIndex !== text.length) bad(`data after the value at ${JSON_TOKEN.lastIndex}`);
  return result;
}

// ------------------------------------------------------------------ mapped loads

const FILE_RANGES_KEY = 'picklejail.file_ranges';
const IDENTITY_KEYS = ['dev', 'ino', 'size', 'mtime_ns', 'ctime_ns'];
const INT64_MIN = -(1n << 63n);
const UINT64_MAX = (1n << 64n) - 1n;
const FILE_ALIGN = 64; // each range starts at this alignment in the buffer the ranges are read into

function badRanges(message) {
  malformed(`${FILE_RANGES_KEY}: ${message}`);
}

function isInteger(v) {
  return typeof v === 'bigint' || Number.isSafeInteger(v);
}

/** `file`: the worker's fstat of the checkpoint, as BigInts (docs/output-format.md). */
function fileIdentity(file) {
  if (!isPlainObject(file) || Object.keys(file).sort().join(',') !== [...IDENTITY_KEYS].sort().join(',')) {
    badRanges(`"file" must hold exactly the integers ${IDENTITY_KEYS.join(', ')}`);
  }
  const identity = {};
  for (const key of IDENTITY_KEYS) {
    if (!isInteger(file[key])) badRanges(`file ${key} is not an integer`);
    const v = BigInt(file[key]);
    const signed = key.endsWith('_ns'); // times are int64, the rest uint64 (as the C++ client reads them)
    if (signed ? v < INT64_MIN || v >= -INT64_MIN : v < 0n || v > UINT64_MAX) {
      badRanges(`file ${key} ${v} is out of range`);
    }
    identity[key] = v;
  }
  return identity;
}

/** One `tensors` entry, checked as ipc/file_ranges_check.cpp and mapped.py check it. */
function fileRangeEntry(name, info, fileSize) {
  const label = `tensor ${JSON.stringify(name)}`;
  const keys = isPlainObject(info) ? Object.keys(info).sort().join(',') : '';
  if (keys !== 'dtype,file_offsets,shape') {
    badRanges(`${label}: entry must have exactly dtype, shape and file_offsets`);
  }
  const { dtype, shape, file_offsets: offsets } = info;
  if (typeof dtype !== 'string' || !has(DTYPE_SIZES, dtype)) {
    badRanges(`${label}: unknown dtype ${JSON.stringify(dtype)}`);
  }
  if (!Array.isArray(shape) || !shape.every(isCount)) {
    badRanges(`${label}: shape must be an array of non-negative integers`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
    badRanges(`${label}: file_offsets must be two non-negative integers`);
  }
  const [begin, end] = offsets;
  if (!(begin < end && BigInt(end) <= fileSize)) {
    badRanges(`${label}: file_offsets [${begin}, ${end}] outside the ${fileSize}-byte file ` +
      '(or empty)');
  }
  const size = DTYPE_SIZES[dtype];
  let numel = 1n;
  for (const d of shape) numel *= BigInt(d);
  if (BigInt(end - begin) !== numel * BigInt(size)) {
    badRanges(`${label}: ${end - begin} bytes for ${dtype}[${shape.join(',')}]`);
  }
  if (begin % size !== 0) badRanges(`${label}: offset ${begin} is not aligned to its elements`);
  return { name, dtype, shape, begin, end };
}

/**
 * { identity, entries } from a layout-only image's metadata (null when it has none).
 * A name may be in the header (`tensors`) or in the file ranges, never both.
 */
function parseFileRanges(metadata, tensors) {
  const text = metadata[FILE_RANGES_KEY];
  if (text === undefined) return null;
  const ranges = parseExactJson(text, FILE_RANGES_KEY);
  if (!isPlainObject(ranges) || Object.keys(ranges).sort().join(',') !== 'file,tensors' ||
      !isPlainObject(ranges.tensors)) {
    badRanges('must be an object with "file" and "tensors"');
  }
  const identity = fileIdentity(ranges.file);
  const entries = new Map();
  for (const [name, info] of Object.entries(ranges.tensors)) {
    if (tensors.has(name)) badRanges(`tensor ${JSON.stringify(name)} is both in the image and in the file`);
    entries.set(name, fileRangeEntry(name, info, identity.size));
  }
  return { identity, entries };
}

/**
 * Check that `fd` is the file the worker checked (device, inode, size, modification and
 * change times, from our own fstat), then read every range from it into one buffer and
 * add each as a tensor with `mapped: true`. Node cannot map a file, so this reads what
 * the Python and C++ clients map; it reads through the same open file description the
 * worker read, so a file renamed over the path in between cannot be substituted.
 */
async function readFileTensors(result, fd) {
  const { identity, entries } = result.fileRanges;
  const st = await promisify(fs.fstat)(fd, { bigint: true });
  const seen = { dev: st.dev, ino: st.ino, size: st.size, mtime_ns: st.mtimeNs, ctime_ns: st.ctimeNs };
  const changed = IDENTITY_KEYS.filter((key) => seen[key] !== identity[key]);
  if (changed.length) {
    fail('io_error', 'the checkpoint changed after the sandbox checked it (' +
      `${changed.map((k) => `${k} ${identity[k]} -> ${seen[k]}`).join(', ')}); load it again`);
  }
  const placed = [];
  let total = 0;
  for (const e of entries.values()) {
    total = Math.ceil(total / FILE_ALIGN) * FILE_ALIGN;
    placed.push({ e, at: total });
    total += e.end - e.begin;
  }
  const data = allocImage(total);
  const read = promisify(fs.read);
  for (const { e, at } of placed) {
    let done = 0;
    while (done < e.end - e.begin) {
      const { bytesRead } = await read(fd, data, at + done, e.end - e.begin - done, e.begin + done);
      if (bytesRead === 0) fail('io_error', `the checkpoint shrank under tensor ${JSON.stringify(e.name)}`);
      done += bytesRead;
    }
    const tensor = { dtype: e.dtype, shape: e.shape, data: data.subarray(at, at + done), mapped: true };
    if (e.complex128) tensor.complex128 = true;
    result.tensors.set(e.name, tensor);
  }
}

// ------------------------------------------------------------------ passing an fd

/**
 * Node's public API cannot attach an fd to a Unix-socket write. Its child-process IPC
 * channel can (libuv's uv_write2 with SCM_RIGHTS), and the handles behind it are reachable
 * through process.binding('pipe_wrap') / ('stream_wrap'): undocumented internals
 * (deprecation DEP0111), so everything is looked up once and checked, and a Node without
 * them gets `unsupported` for mmap loads only.
 */
let fdPassingCache;
function fdPassing() {
  if (fdPassingCache !== undefined) return fdPassingCache;
  fdPassingCache = null;
  try {
    const pipeWrap = process.binding('pipe_wrap');
    const streamWrap = process.binding('stream_wrap');
    const { Pipe, PipeConnectWrap, constants } = pipeWrap;
    const { WriteWrap } = streamWrap;
    if (typeof Pipe === 'function' && typeof PipeConnectWrap === 'function' &&
        typeof WriteWrap === 'function' && constants && Number.isInteger(constants.IPC) &&
        Number.isInteger(constants.SOCKET) && typeof Pipe.prototype.writeUtf8String === 'function' &&
        typeof Pipe.prototype.open === 'function' && typeof Pipe.prototype.connect === 'function') {
      fdPassingCache = { Pipe, PipeConnectWrap, WriteWrap, constants };
    }
  } catch (err) {
    // No such bindings in this Node: mmap loads are unsupported.
  }
  return fdPassingCache;
}

function needFdPassing() {
  const fp = fdPassing();
  if (!fp) {
    fail('unsupported', 'this Node offers no way to pass a file descriptor over a Unix socket, ' +
      'which mmap loads need');
  }
  return fp;
}

/** A connected socket on a libuv IPC pipe (one that can carry fds), as a net.Socket. */
function connectFdCapable(path) {
  const { Pipe, PipeConnectWrap, constants } = needFdPassing();
  return new Promise((resolve, reject) => {
    const handle = new Pipe(constants.IPC);
    const unavailable = (status) => {
      handle.close();
      reject(new PicklejailError('unavailable', `cannot connect to picklejaild at ${path}: ` +
        `${util.getSystemErrorName(status)}`));
    };
    const req = new PipeConnectWrap();
    req.oncomplete = (status) => {
      if (status < 0) unavailable(status);
      else resolve(new net.Socket({ handle, readable: true, writable: true }));
    };
    const err = handle.connect(req, path);
    if (err < 0) unavailable(err);
  });
}

/**
 * Open `path` for an mmap load: a regular file, read-only, as a pipe handle that can be
 * attached to a write. The handle owns the fd (closing it closes the fd), which stays
 * open for the identity check and the reads after the reply.
 */
async function openForPassing(path) {
  const { Pipe, constants } = needFdPassing();
  let fd;
  try {
    fd = await promisify(fs.open)(path,
      fs.constants.O_RDONLY | fs.constants.O_NOCTTY | fs.constants.O_NONBLOCK);
  } catch (err) {
    const code = err.code === 'EACCES' || err.code === 'EPERM' ? 'denied' : 'io_error';
    fail(code, `cannot open ${path}: ${err.code || err.message}`);
  }
  let st;
  try {
    st = await promisify(fs.fstat)(fd);
  } catch (err) {
    st = null;
  }
  const handle = st && st.isFile() ? new Pipe(constants.SOCKET) : null;
  const err = handle ? handle.open(fd) : 0;
  if (!handle || err < 0) {
    if (handle) handle.close();
    fs.closeSync(fd);
    if (!handle) fail('io_error', `${path} is not a regular file`);
    fail('unsupported', `cannot wrap the fd for passing: ${util.getSystemErrorName(err)}`);
  }
  return { fd, handle };
}

// ------------------------------------------------------------------ the object tree

/**
 * A class, function or enum member the file holds by name ("module.qualname"). It is
 * never looked up. There is one instance per name (`new Global(n) === new Global(n)`),
 * so a global used as a dict key (Lightning < 1.5 keyed callback state by class) works
 * as a Map key. Instances no longer used are dropped from the registry.
 */
class Global {
  constructor(name) {
    if (typeof name !== 'string') throw new TypeError('a Global needs a string name');
    const known = GLOBALS.get(name);
    const existing = known && known.deref();
    if (existing) return existing;
    this.name = name;
    Object.freeze(this);
    GLOBALS.set(name, new WeakRef(this));
    GLOBALS_GONE.register(this, name);
  }

  toString() {
    return `Global(${this.name})`;
  }
}

const GLOBALS = new Map(); // name -> WeakRef(Global)
const GLOBALS_GONE = new FinalizationRegistry((name) => {
  const known = GLOBALS.get(name);
  if (known && !known.deref()) GLOBALS.delete(name);
});

/**
 * An object kept as data, never the object itself: `name` is its class
 * ("module.qualname"), `args` the Tuple it was created with (REDUCE / NEWOBJ), `kwargs`
 * NEWOBJ_EX's keyword arguments (a Map), `state` what BUILD restored (usually a Map of
 * the instance's __dict__; null when never built), `dictitems` (Map) and `listitems`
 * (Array) what a dict or list subclass pickles after itself.
 */
class Record {
  constructor(name, args, state, kwargs, dictitems, listitems) {
    this.name = name;
    this.args = args || EMPTY_TUPLE;
    this.kwargs = kwargs || new Map();
    this.state = state === undefined ? null : state;
    this.dictitems = dictitems || new Map();
    this.listitems = listitems || [];
  }

  toString() {
    return `Record(${this.name})`;
  }
}

/** getattr(record, name): a bound method stored as data; `obj` is its owner. */
class Method {
  constructor(name, obj) {
    this.name = name;
    this.obj = obj === undefined ? null : obj;
  }

  toString() {
    return `Method(${this.name})`;
  }
}

/** A Python tuple (or torch.Size): a frozen Array, told from a list by `instanceof Tuple`. */
class Tuple extends Array {
  static get [Symbol.species]() {
    return Array; // map() and friends give plain arrays, not tuples
  }

  /** A frozen Tuple of `items` (any iterable). */
  static of(...items) {
    return makeTuple(items);
  }
}

function makeTuple(items) {
  const t = new Tuple();
  for (const item of items) t.push(item); // not push(...items): no argument-count limit
  return Object.freeze(t);
}

const EMPTY_TUPLE = makeTuple([]);

/** A Python complex number. */
class Complex {
  constructor(re, im) {
    this.re = re;
    this.im = im;
    Object.freeze(this);
  }
}

const OBJECT_KEY = 'picklejail.object';
const NOT_SELECTED = Symbol('not selected'); // a tensor `select` left out
const BEING_BUILT = Symbol('being built'); // an immutable shared object not finished yet
const FLOATS = { nan: NaN, inf: Infinity, '-inf': -Infinity };
const DEFAULT_FACTORIES = new Set(['list', 'dict', 'int', 'float', 'str', 'tuple', 'set']);
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const HEX_BYTES = /^(?:[0-9a-fA-F]{2})+$/;
// torch dtype names in tensor nodes -> the safetensors dtype stored (docs/output-format.md).
const TORCH_DTYPES = Object.freeze({
  bool: 'BOOL', uint8: 'U8', int8: 'I8', int16: 'I16', int32: 'I32', int64: 'I64',
  uint16: 'U16', uint32: 'U32', uint64: 'U64', float16: 'F16', bfloat16: 'BF16',
  float32: 'F32', float64: 'F64', complex64: 'C64', complex128: 'F64',
  float8_e4m3fn: 'F8_E4M3', float8_e5m2: 'F8_E5M2', float8_e4m3fnuz: 'F8_E4M3FNUZ',
  float8_e5m2fnuz: 'F8_E5M2FNUZ',
});
// The data tensors a sparse or quantized node may hold.
const KIND_PARTS = new Set(['indices', 'values', 'compressed_indices', 'plain_indices',
  'int_repr', 'scales', 'zero_points']);

function badNode(message) {
  fail('malformed', `invalid object description: ${message}`);
}

function isNode(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function has(object, key) {
  return Object.prototype.hasOwnProperty.call(object, key);
}

function isId(v) {
  return Number.isSafeInteger(v) && v >= 0;
}

/** The protocol's select rule: equal, or a prefix followed by ".", or a prefix ending in ".". */
function matchesSelect(name, select) {
  return select.some((s) => name === s || (name.startsWith(s) &&
    (s.endsWith('.') || name[s.length] === '.')));
}

/**
 * Rebuilds a description into JS values without recursion: every node is a step on
 * `work` (last in, first out), and a container schedules its children, in order, before
 * the step that completes it. Steps therefore run in the description's pre-order, the
 * order that numbers shared objects, and no nesting depth can exhaust the stack.
 */
class TreeBuilder {
  constructor(image) {
    this.tensors = image.tensors;
    this.aliases = image.aliases || new Map();
    this.select = Array.isArray(image.select) ? image.select : null;
    this.byId = new Map(); // tensor or tensor-kind id -> { stored, value }
    this.shared = []; // "shared" K -> its object (BEING_BUILT while an immutable one is made)
    this.work = [];
  }

  build(root) {
    let out = null;
    this.visit(root, (v) => { out = v; });
    while (this.work.length) this.work.pop()();
    return out === NOT_SELECTED ? null : out;
  }

  /** Schedule `node`; `put` receives its value once it is complete. */
  visit(node, put) {
    this.work.push(() => this.node(node, put));
  }

  /** Schedule `node`, then `done` once `put` has had its value. */
  visitThen(node, put, done) {
    this.sequence([() => this.node(node, put)], done);
  }

  node(node, put) {
    if (node === null || typeof node !== 'object') {
      put(node); // null, boolean, number, BigInt, string
      return;
    }
    if (Array.isArray(node)) {
      const list = [];
      this.fillList(list, node, () => put(list));
      return;
    }
    for (const [tag, handler] of TAGS) {
      if (has(node, tag)) {
        handler.call(this, node[tag], node, put);
        return;
      }
    }
    badNode(`unknown node with keys ${JSON.stringify(Object.keys(node).slice(0, 5))}`);
  }

  /**
   * Run `steps` (functions) in order, then `done`; each step may schedule more, which
   * run before the next step. Handlers only ever schedule, never rebuild a child
   * themselves, so the JS stack stays shallow whatever the nesting.
   */
  sequence(steps, done) {
    this.work.push(done);
    for (let i = steps.length - 1; i >= 0; i--) this.work.push(steps[i]);
  }

  /** Steps that rebuild each of `nodes` and hand it to `put(value, index)`. */
  itemSteps(nodes, put) {
    if (!Array.isArray(nodes)) badNode('a sequence node does not hold a list');
    return nodes.map((item, i) => () => this.node(item, (v) => put(v, i)));
  }

  items(nodes, done) {
    const out = new Array(Array.isArray(nodes) ? nodes.length : 0);
    this.sequence(this.itemSteps(nodes, (v, i) => {
      out[i] = v === NOT_SELECTED ? null : v; // an unselected tensor is null in a sequence
    }), () => done(out));
  }

  // ---------------------------------------------------------------- containers

  fillList(list, nodes, done) {
    this.items(nodes, (values) => {
      for (const v of values) list.push(v);
      done();
    });
  }

  /** [[key, value], ...] into `map`, in order; an unselected tensor's entry is dropped. */
  fillPairs(map, pairs, done) {
    if (!Array.isArray(pairs)) badNode('a mapping node does not hold a list of pairs');
    const steps = [];
    for (const pair of pairs) {
      if (!Array.isArray(pair) || pair.length !== 2) badNode('a mapping entry is not a [key, value] pair');
      let key = pair[0];
      if (typeof key !== 'string') {
        steps.push(() => this.node(pair[0], (k) => { key = k === NOT_SELECTED ? null : k; }));
      }
      steps.push(() => this.node(pair[1], (v) => {
        if (v !== NOT_SELECTED) map.set(key, v);
      }));
    }
    this.sequence(steps, done);
  }

  /** A mapping node's entries, then its `attrs` (the pickled __dict__) as `map.attrs`. */
  fillMapping(map, pairs, node, done) {
    this.fillPairs(map, pairs, () => this.fillAttrs(map, node, done));
  }

  fillAttrs(map, node, done) {
    if (!has(node, 'attrs')) {
      done();
      return;
    }
    this.visitThen(node.attrs, (attrs) => {
      if (!(attrs instanceof Map) || ![...attrs.keys()].every((k) => typeof k === 'string')) {
        badNode('attrs is not a dict of attribute names');
      }
      map.attrs = attrs;
    }, done);
  }

  /** The keys-only form: entry i is keys[i] -> the tensor prefix + keys[i], id first_id + i. */
  fillTensorDict(map, node, done) {
    const keys = has(node, 'odict_of_tensors') ? node.odict_of_tensors : node.dict_of_tensors;
    const first = node.first_id;
    const prefix = has(node, 'prefix') ? node.prefix : '';
    if (!Array.isArray(keys) || !keys.every((k) => typeof k === 'string')) {
      badNode('a dict_of_tensors node does not hold a list of string keys');
    }
    if (!isId(first) || typeof prefix !== 'string') {
      badNode('a dict_of_tensors node needs a first_id >= 0 and a string prefix');
    }
    keys.forEach((key, i) => {
      const value = this.tensorById(first + i, prefix + key, null);
      if (value !== NOT_SELECTED) map.set(key, value);
    });
    this.fillAttrs(map, node, done);
  }

  newDefaultDict(node) {
    const factory = has(node, 'factory') ? node.factory : null;
    if (factory !== null && !DEFAULT_FACTORIES.has(factory)) {
      badNode(`defaultdict factory ${JSON.stringify(factory)} is not one the policy allows`);
    }
    const map = new Map();
    map.defaultFactory = factory; // the builtin's name ("list", ...), or null
    return map;
  }

  // ---------------------------------------------------------------- tensors

  /** The image's tensor for `name` (stored or alias), one JS object per id. */
  tensorById(id, name, dtype) {
    if (!isId(id)) badNode(`tensor ${JSON.stringify(name)} has no integer id`);
    const stored = this.tensors.has(name) ? name : this.aliases.get(name);
    const seen = this.byId.get(id);
    if (seen) {
      if (stored !== undefined && seen.stored !== undefined && seen.stored !== stored) {
        badNode(`tensor id ${id} denotes both ${JSON.stringify(seen.stored)} and ` +
          JSON.stringify(stored));
      }
      return seen.value;
    }
    if (stored === undefined) {
      if (this.select && !matchesSelect(name, this.select)) return NOT_SELECTED;
      badNode(`the description refers to tensor ${JSON.stringify(name)}, which the image ` +
        'does not hold');
    }
    const value = this.tensors.get(stored);
    if (dtype !== null) checkDtype(name, dtype, value);
    this.byId.set(id, { stored, value });
    return value;
  }

  /** A sparse, quantized or meta node: a frozen object with its data tensors, one per id. */
  tensorKind(kind, node, put) {
    if (!isId(node.id)) badNode(`${kind} tensor node without an integer id`);
    const seen = this.byId.get(node.id);
    if (seen) {
      put(seen.value);
      return;
    }
    const out = { kind: kind === 'meta_tensor' ? 'meta' : kind };
    let value;
    for (const [key, field] of Object.entries(node)) {
      if (key === 'id') continue;
      if (key === kind) {
        out[kind === 'sparse' ? 'layout' : 'dtype'] = field;
      } else if (KIND_PARTS.has(key)) {
        if (!isNode(field) || typeof field.tensor !== 'string') {
          badNode(`${kind} tensor's ${key} is not a tensor node`);
        }
        const part = this.tensorById(field.id, field.tensor, field.dtype);
        if (part === NOT_SELECTED) value = NOT_SELECTED; // `select` left out its data
        out[key] = part;
      } else {
        out[key] = field;
      }
    }
    if (value === undefined) value = Object.freeze(out);
    this.byId.set(node.id, { stored: undefined, value });
    put(value);
  }

  // ---------------------------------------------------------------- records

  fillRecord(record, node, done) {
    const steps = [() => this.node(has(node, 'args') ? node.args : null, (args) => {
      if (args === null) args = EMPTY_TUPLE;
      if (!(args instanceof Tuple)) badNode(`${record.name} record's args are not a tuple`);
      record.args = args;
    })];
    if (has(node, 'kwargs')) {
      steps.push(() => this.node(node.kwargs, (kwargs) => {
        if (!(kwargs instanceof Map)) badNode(`${record.name} record's kwargs are not a dict`);
        record.kwargs = kwargs;
      }));
    }
    steps.push(() => this.node(has(node, 'state') ? node.state : null, (state) => {
      record.state = state === NOT_SELECTED ? null : state;
    }));
    if (has(node, 'dictitems')) steps.push(() => this.fillPairs(record.dictitems, node.dictitems, () => {}));
    if (has(node, 'listitems')) steps.push(() => this.fillList(record.listitems, node.listitems, () => {}));
    this.sequence(steps, done);
  }

  fillMethod(method, node, done) {
    this.visitThen(has(node, 'self') ? node.self : null, (owner) => {
      method.obj = owner === NOT_SELECTED ? null : owner;
    }, done);
  }

  // ---------------------------------------------------------------- shared objects

  /**
   * {"shared": K, "value": node}: one object per K. A mutable one (list, dict, set,
   * record, method) exists, empty, before its contents, so a {"ref": K} inside it (a
   * cycle) gets it; an immutable one is complete before anything may refer to it.
   */
  sharedNode(k, node, put) {
    if (k !== this.shared.length) badNode(`shared object ${JSON.stringify(k)} out of order`);
    const inner = node.value;
    const shell = this.shell(inner);
    if (!shell) {
      this.shared.push(BEING_BUILT);
      let value;
      this.visitThen(inner, (v) => { value = v; }, () => {
        this.shared[k] = value;
        put(value);
      });
      return;
    }
    this.shared.push(shell.obj);
    shell.fill(() => put(shell.obj));
  }

  refNode(k, node, put) {
    if (!isId(k) || k >= this.shared.length) {
      badNode(`reference to unknown shared object ${JSON.stringify(k)}`);
    }
    const value = this.shared[k];
    if (value === BEING_BUILT) badNode('an immutable object (tuple, frozenset) contains itself');
    put(value);
  }

  /** { obj: the empty mutable object, fill(done) } for `inner`, or null if it is immutable. */
  shell(inner) {
    if (Array.isArray(inner)) {
      const obj = [];
      return { obj, fill: (done) => this.fillList(obj, inner, done) };
    }
    if (!isNode(inner)) return null;
    if (typeof inner.object === 'string') {
      const obj = new Record(inner.object);
      return { obj, fill: (done) => this.fillRecord(obj, inner, done) };
    }
    if (typeof inner.method === 'string') {
      const obj = new Method(inner.method, null);
      return { obj, fill: (done) => this.fillMethod(obj, inner, done) };
    }
    for (const tag of MAPPING_TAGS) {
      if (!has(inner, tag)) continue;
      const obj = tag === 'defaultdict' ? this.newDefaultDict(inner) : new Map();
      const fill = tag.endsWith('_of_tensors')
        ? (done) => this.fillTensorDict(obj, inner, done)
        : (done) => this.fillMapping(obj, inner[tag], inner, done);
      return { obj, fill };
    }
    if (has(inner, 'set')) {
      const obj = new Set();
      return { obj, fill: (done) => this.items(inner.set, (values) => {
        for (const v of values) obj.add(v);
        done();
      }) };
    }
    return null;
  }
}

const MAPPING_TAGS = ['odict_of_tensors', 'dict_of_tensors', 'odict', 'dict', 'counter',
  'defaultdict'];

function checkDtype(name, dtype, tensor) {
  const stored = TORCH_DTYPES[dtype];
  const complex128 = dtype === 'complex128';
  if (stored === undefined || stored !== tensor.dtype || complex128 !== !!tensor.complex128) {
    badNode(`tensor ${JSON.stringify(name)} is described as ${JSON.stringify(dtype)} but ` +
      `stored as ${tensor.dtype}${tensor.complex128 ? ' (complex128)' : ''}`);
  }
}

function bigIntFromHex(text) {
  if (typeof text !== 'string' || !HEX_BYTES.test(text)) {
    badNode(`int node ${JSON.stringify(text)} is not hex bytes`);
  }
  const bytes = text.match(/../g).reverse().join(''); // little-endian -> big-endian
  const unsigned = BigInt(`0x${bytes}`);
  const bits = BigInt(bytes.length * 4);
  return unsigned >= 1n << (bits - 1n) ? unsigned - (1n << bits) : unsigned;
}

function base64Bytes(text) {
  if (typeof text !== 'string' || !BASE64.test(text)) badNode('bytes node is not base64');
  return Buffer.from(text, 'base64');
}

function complexPart(v) {
  if (typeof v === 'bigint') return Number(v);
  if (typeof v !== 'number') badNode('complex node parts are not numbers');
  return v;
}

/* Node tags and their handlers, tried in this order (the Python client's order). */
const TAGS = [
  ['tensor', function tensor(name, node, put) {
    if (typeof name !== 'string' || typeof node.dtype !== 'string') {
      badNode(`bad tensor node ${JSON.stringify(node).slice(0, 200)}`);
    }
    put(this.tensorById(node.id, name, node.dtype));
  }],
  ['ref', TreeBuilder.prototype.refNode],
  ['shared', TreeBuilder.prototype.sharedNode],
  ['method', function method(name, node, put) {
    if (typeof name !== 'string') badNode('method node does not name its attribute');
    const m = new Method(name, null);
    this.fillMethod(m, node, () => put(m));
  }],
  ['sparse', function sparse(v, node, put) { this.tensorKind('sparse', node, put); }],
  ['quantized', function quantized(v, node, put) { this.tensorKind('quantized', node, put); }],
  ['meta_tensor', function meta(v, node, put) { this.tensorKind('meta_tensor', node, put); }],
  ['odict_of_tensors', function odictOfTensors(v, node, put) {
    const map = new Map();
    this.fillTensorDict(map, node, () => put(map));
  }],
  ['dict_of_tensors', function dictOfTensors(v, node, put) {
    const map = new Map();
    this.fillTensorDict(map, node, () => put(map));
  }],
  ['object', function object(name, node, put) {
    if (typeof name !== 'string') badNode('object node does not name its class');
    const record = new Record(name);
    this.fillRecord(record, node, () => put(record));
  }],
  ...['odict', 'dict', 'counter'].map((tag) => [tag, function mapping(pairs, node, put) {
    const map = new Map();
    this.fillMapping(map, pairs, node, () => put(map));
  }]),
  ['defaultdict', function defaultdict(pairs, node, put) {
    const map = this.newDefaultDict(node);
    this.fillMapping(map, pairs, node, () => put(map));
  }],
  ...['tuple', 'size'].map((tag) => [tag, function tuple(items, node, put) {
    this.items(items, (values) => put(makeTuple(values)));
  }]),
  ...['set', 'frozenset'].map((tag) => [tag, function set(items, node, put) {
    this.items(items, (values) => put(new Set(values)));
  }]),
  ['int', function int(text, node, put) { put(bigIntFromHex(text)); }],
  ['float', function float(text, node, put) {
    if (typeof text !== 'string' || !has(FLOATS, text)) {
      badNode(`float node ${JSON.stringify(text)} is not nan, inf or -inf`);
    }
    put(FLOATS[text]);
  }],
  ['complex', function complex(parts, node, put) {
    if (!Array.isArray(parts) || parts.length !== 2) badNode('complex node is not [re, im]');
    this.items(parts, ([re, im]) => put(new Complex(complexPart(re), complexPart(im))));
  }],
  ['bytes', function bytes(text, node, put) { put(base64Bytes(text)); }],
  ['bytearray', function bytearray(text, node, put) { put(base64Bytes(text)); }],
  ['dtype', function dtype(name, node, put) {
    if (typeof name !== 'string') badNode('dtype node does not hold a name');
    put(new Global(`torch.${name}`)); // what torch pickles a dtype as
  }],
  ['device', function device(spec, node, put) {
    if (typeof spec !== 'string') badNode('device node does not hold a string');
    put(new Record('torch.device', makeTuple([spec])));
  }],
  ['global', function global(name, node, put) {
    if (typeof name !== 'string') badNode('global node does not hold a name');
    put(new Global(name));
  }],
];

/**
 * The unpickled object the image describes (`picklejail.object`), rebuilt as plain JS
 * values; undefined when the image has no description. See README.md for what each node
 * becomes. Nothing named in the file is looked up or called. Integers beyond ±2^53 are
 * BigInts. Tensors are the image's own tensor objects (`image.get(name)`), the same
 * object for every node with the same id. An image from `load` with `select` carries
 * its selection: a tensor left out is dropped from a mapping and null in a sequence.
 */
function objectTree(image) {
  const text = image.metadata && image.metadata[OBJECT_KEY];
  if (text === undefined) return undefined;
  return new TreeBuilder(image).build(parseExactJson(text, OBJECT_KEY));
}

/**
 * { records, references }: the sorted, unique class names of the description's records
 * ({"object": ...}) and the names of its references ({"global": ...}), as
 * `picklejail inspect --json` lists them. `description` is a parsed description
 * (image.object). Iterative.
 */
function objectNames(description) {
  const records = new Set();
  const references = new Set();
  const pending = [description];
  while (pending.length) {
    const node = pending.pop();
    if (node === null || typeof node !== 'object') continue;
    if (!Array.isArray(node)) {
      if (typeof node.object === 'string') records.add(node.object);
      if (typeof node.global === 'string') references.add(node.global);
    }
    for (const child of Object.values(node)) pending.push(child);
  }
  const sorted = (set) => [...set].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return { records: sorted(records), references: sorted(references) };
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
 *         mmap: send the file as an fd and read the tensors it holds verbatim from it
 *         (README.md), timeout: idle milliseconds before giving up (default: none) }
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
  objectTree,
  objectNames,
  typedArray,
  Client,
  PicklejailError,
  Record,
  Global,
  Method,
  Tuple,
  Complex,
  DTYPE_SIZES,
  DEFAULT_SOCKET,
  socketPath,
};
