#!/usr/bin/env node
'use strict';
/**
 * picklejail-node: load a checkpoint through picklejaild and list its tensors.
 *
 *   node client/node/cli.js [--socket S] [--transport shm|inline] [--policy P]
 *                           [--select NAME]... [--mmap] [--json] [--inspect] FILE
 *
 * Prints one line per stored tensor: name, dtype, shape (JSON) and the sha256 of its
 * bytes, tab-separated. --json prints the same as one JSON object (with the aliases, the
 * image's __metadata__, and the record classes and references the object description
 * names, as `picklejail inspect --json` lists them). --mmap sends the file as an fd and
 * reads the tensors it holds verbatim from it (README.md). --inspect prints the daemon's
 * inspect report as JSON.
 * On error: "picklejail: CODE: message" on stderr and exit status 1 (2 for usage errors).
 */

const crypto = require('crypto');
const picklejail = require('./picklejail');

const USAGE = 'usage: picklejail-node [--socket S] [--transport shm|inline] [--policy P] ' +
  '[--select NAME]... [--mmap] [--json] [--inspect] FILE';

function parseArgs(argv) {
  const opts = { select: [], json: false, inspect: false, mmap: false };
  const files = [];
  const takesValue = new Set(['--socket', '--transport', '--policy', '--select']);
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    if (arg === '--') {
      files.push(...argv.slice(i + 1));
      break;
    }
    if (arg === '-h' || arg === '--help') return { help: true };
    if (arg === '--json') { opts.json = true; continue; }
    if (arg === '--inspect') { opts.inspect = true; continue; }
    if (arg === '--mmap') { opts.mmap = true; continue; }
    let value;
    const eq = arg.indexOf('=');
    if (arg.startsWith('--') && eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    if (takesValue.has(arg)) {
      if (value === undefined) {
        if (i + 1 >= argv.length) throw new Error(`${arg} needs a value`);
        value = argv[++i];
      }
      if (arg === '--select') opts.select.push(value);
      else opts[arg.slice(2)] = value;
      continue;
    }
    if (arg.startsWith('-') && arg !== '-') throw new Error(`unknown option ${arg}`);
    files.push(arg);
  }
  if (files.length !== 1) throw new Error('exactly one FILE is needed');
  opts.file = files[0];
  if (!opts.select.length) delete opts.select;
  return opts;
}

function sha256(data) {
  return crypto.createHash('sha256').update(data).digest('hex');
}

async function main(argv) {
  let opts;
  try {
    opts = parseArgs(argv);
  } catch (err) {
    process.stderr.write(`picklejail: invalid_request: ${err.message}\n${USAGE}\n`);
    return 2;
  }
  if (opts.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const callOpts = { socket: opts.socket, policy: opts.policy, select: opts.select };
  if (opts.inspect) {
    const report = await picklejail.inspect(opts.file, callOpts);
    process.stdout.write(`${JSON.stringify(report, null, 1)}\n`);
    return 0;
  }
  callOpts.transport = opts.transport;
  if (opts.mmap) callOpts.mmap = true;
  const result = await picklejail.load(opts.file, callOpts);
  if (opts.json) {
    const tensors = {};
    for (const [name, t] of result.tensors) {
      tensors[name] = { dtype: t.dtype, shape: t.shape, sha256: sha256(t.data) };
      if (t.complex128) tensors[name].complex128 = true;
      if (t.mapped) tensors[name].mapped = true;
    }
    const out = {
      file: opts.file,
      reply: result.reply,
      tensors,
      aliases: Object.fromEntries(result.aliases),
      __metadata__: result.metadata,
    };
    if (result.object !== undefined) Object.assign(out, picklejail.objectNames(result.object));
    process.stdout.write(`${JSON.stringify(out)}\n`);
  } else {
    const lines = [];
    for (const [name, t] of result.tensors) {
      lines.push(`${name}\t${t.dtype}\t${JSON.stringify(t.shape)}\t${sha256(t.data)}\n`);
    }
    process.stdout.write(lines.join(''));
  }
  return 0;
}

process.stdout.on('error', (err) => {
  if (err.code === 'EPIPE') process.exit(0); // e.g. piped into head
  throw err;
});

main(process.argv.slice(2)).then(
  (status) => { process.exitCode = status; },
  (err) => {
    const code = err instanceof picklejail.PicklejailError ? err.code : 'internal';
    const text = err && err.message !== undefined ? err.message : err;
    const message = String(text).replace(/\n/g, ' ');
    process.stderr.write(`picklejail: ${code}: ${message}\n`);
    process.exitCode = 1;
  },
);
