"""The Node.js client (client/node) against a real picklejaild, and against a scripted one.

Every `load` fixture of both manifests goes through `node client/node/cli.js --json` by
the shm and the inline transport and must match the manifest's dtype, shape and sha256.
A hand-written os.system pickle must be refused with forbidden_global, and no shm object
may outlive its load. Real-world files loaded under `inert` are rebuilt by objectTree and
checked against tests/fixtures/realworld/manifest.json (records, references, scalars,
tensor bytes) and for shared objects and cycles; mmap loads must give the bytes the
copying load gives. A scripted stand-in daemon then checks what the real one cannot be
made to do: reply lines and inline bytes in any chunking, images that break the
safetensors rules (the client must validate them itself), and file ranges that lie or a
file that changed after the worker saw it.
"""

import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from daemon_support import Daemon, daemon_binary

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
REALWORLD = FIXTURES / "realworld"
NODE = shutil.which("node")
CLI = REPO / "client" / "node" / "cli.js"
MODULE = REPO / "client" / "node" / "picklejail.js"
NODE_TIMEOUT_S = 60
SCRIPTED_TIMEOUT_S = 15  # the scripted daemon answers at once; a hang is a client bug

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not on PATH (apt-get install nodejs)")
needs_daemon = pytest.mark.skipif(not daemon_binary().is_file(),
                                  reason=f"picklejaild not built at {daemon_binary()}")

# GLOBAL os.system, "echo", TUPLE1, REDUCE, STOP: written as opcodes, never unpickled.
OS_SYSTEM_PICKLE = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00echo\x85R."


def load_cases():
    for manifest in sorted(FIXTURES.glob("torch-*/manifest.json")):
        for entry in json.loads(manifest.read_text()):
            if entry["expect"] == "load":
                yield pytest.param(manifest.parent / entry["file"], entry,
                                   id=f"{manifest.parent.name}/{entry['file']}")


def run_cli(socket_path, *args, timeout=NODE_TIMEOUT_S):
    return subprocess.run([NODE, str(CLI), "--socket", str(socket_path), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def run_node(script, *args, timeout=NODE_TIMEOUT_S):
    """Run a snippet with `pj` = the client module; returns its stdout parsed as JSON."""
    code = f"const pj = require({json.dumps(str(MODULE))});\n{script}"
    proc = subprocess.run([NODE, "-e", code, "--", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def our_shm_objects():
    return {n for n in os.listdir("/dev/shm") if n.startswith(f"picklejail-{os.geteuid()}-")}


# ---------------------------------------------------------------- against picklejaild

@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("node-daemon"))
    yield d
    d.stop()


@pytest.fixture(scope="module")
def shm_names_seen():
    """Every shm object the shm loads of this module received."""
    return set()


@needs_daemon
@pytest.mark.parametrize("transport", ["shm", "inline"])
@pytest.mark.parametrize("ckpt,entry", load_cases())
def test_fixture_matches_manifest(daemon, shm_names_seen, ckpt, entry, transport):
    policy = entry.get("policy", "checkpoint")
    proc = run_cli(daemon.socket_path, "--json", "--transport", transport, "--policy", policy, ckpt)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    reply, tensors, metadata = out["reply"], out["tensors"], out["__metadata__"]
    assert reply["transport"] == transport and reply["tensors"] == len(tensors)
    assert metadata.get("format") == "pt"
    if transport == "shm":
        shm_names_seen.add(reply["shm_name"])
        assert not os.path.exists(reply["shm_path"]), "the shm object was not released"

    want_names = set(entry["tensors"])
    assert set(tensors) <= want_names and set(out["aliases"]) <= want_names
    for name, want in entry["tensors"].items():
        stored = name if name in tensors else metadata[name]  # an alias of a tied tensor
        assert out["aliases"].get(name, name) == stored
        got = tensors[stored]
        want_dtype, want_shape = want["dtype"], want["shape"]
        if want_dtype == "C128":  # stored as F64 with a trailing dimension of 2
            want_dtype, want_shape = "F64", want_shape + [2]
            assert got.get("complex128") is True, name
        assert (got["dtype"], got["shape"]) == (want_dtype, want_shape), name
        assert got["sha256"] == want["sha256"], f"{name}: bytes differ"


@needs_daemon
def test_text_output_one_line_per_tensor(daemon):
    ckpt = FIXTURES / "torch-2.11" / "views.pt"
    entry = next(e for e in json.loads((FIXTURES / "torch-2.11" / "manifest.json").read_text())
                 if e["file"] == "views.pt")
    proc = run_cli(daemon.socket_path, "--policy", "checkpoint", ckpt)
    assert proc.returncode == 0, proc.stderr
    lines = [line.split("\t") for line in proc.stdout.splitlines()]
    assert lines and all(len(fields) == 4 for fields in lines)
    for name, dtype, shape, digest in lines:
        want = entry["tensors"][name]
        assert (dtype, json.loads(shape), digest) == (want["dtype"], want["shape"], want["sha256"])


@needs_daemon
@pytest.mark.parametrize("transport", ["shm", "inline"])
def test_os_system_pickle_is_refused(daemon, tmp_path, transport):
    evil = tmp_path / "evil.pt"
    evil.write_bytes(OS_SYSTEM_PICKLE)
    evil.chmod(0o644)
    proc = run_cli(daemon.socket_path, "--transport", transport, evil)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("picklejail: forbidden_global: "), proc.stderr
    assert "os.system" in proc.stderr


@needs_daemon
def test_module_api_errors_and_views(daemon, tmp_path):
    evil = tmp_path / "evil.pt"
    evil.write_bytes(OS_SYSTEM_PICKLE)
    ckpt = FIXTURES / "torch-2.11" / "views.pt"
    result = run_node("""
        const [sock, evil, ckpt] = process.argv.slice(1);
        (async () => {
          const out = {};
          out.ping = await pj.ping({ socket: sock });
          try { await pj.load(evil, { socket: sock }); } catch (e) {
            out.err = { isError: e instanceof Error, isPj: e instanceof pj.PicklejailError,
                        code: e.code, global: e.global, message: e.message };
          }
          const r = await pj.load(ckpt, { socket: sock, policy: 'checkpoint',
                                          transport: 'inline' });
          const full = r.tensors.get('full');
          out.view = full.data.buffer === r.image.buffer;   // a view, not a copy
          out.tied = r.get('tied_a') === full;
          out.first = Array.from(pj.typedArray(full).slice(0, 2));
          const sel = await pj.load(ckpt, { socket: sock, policy: 'checkpoint', select: ['row3'] });
          out.selected = [...sel.tensors.keys()];
          const c = await pj.Client.connect({ socket: sock });
          out.inspected = (await c.inspect(ckpt)).tensors.length;
          out.shm_objects = (await c.stats()).shm_objects;
          c.close();
          console.log(JSON.stringify(out));
        })().catch((e) => { console.error(e); process.exit(3); });
    """, daemon.socket_path, evil, ckpt)
    assert result["ping"]["protocol"] == 1
    err = result["err"]
    assert err["isError"] and err["isPj"]
    assert (err["code"], err["global"]) == ("forbidden_global", "os.system")
    assert result["view"] and result["tied"]
    assert len(result["first"]) == 2
    assert result["selected"] == ["row3"]
    assert result["inspected"] >= 9
    assert result["shm_objects"] == 0


@needs_daemon
def test_no_shm_object_left(daemon, shm_names_seen):
    """Runs after the fixture loads (definition order): everything they received is gone."""
    for name in shm_names_seen:
        assert not os.path.exists(f"/dev/shm/{name}"), name
    assert daemon.stats()["shm_objects"] == 0
    assert not (our_shm_objects() & shm_names_seen)


# ---------------------------------------------------------------- objectTree (inert)

# Walks the rebuilt tree: every record class, reference name and tensor object reached,
# each scalar the manifest lists (a record's fields through its state), and the checks
# particular to each file (shared objects and cycles must be the very same JS objects).
TREE_SCRIPT = """
const crypto = require('crypto');
const [sock, ckpt, entryJson] = process.argv.slice(1);
const entry = JSON.parse(entryJson);
const sha = (t) => crypto.createHash('sha256').update(t.data).digest('hex');

function walk(root) {
  const records = new Set(), references = new Set(), tensors = new Set(), seen = new Set();
  const pending = [root];
  while (pending.length) {
    const v = pending.pop();
    if (v === null || typeof v !== 'object' || seen.has(v)) continue;
    seen.add(v);
    if (v instanceof pj.Global) references.add(v.name);
    else if (v instanceof pj.Record) { records.add(v.name); pending.push(v.args, v.kwargs, v.state); }
    else if (v instanceof pj.Method) pending.push(v.obj);
    else if (v instanceof Map) for (const [k, x] of v) pending.push(k, x);
    else if (Array.isArray(v) || v instanceof Set) pending.push(...v);
    else if (v.data && v.dtype) tensors.add(v);
  }
  return { records: [...records].sort(), references: [...references].sort(), tensors };
}

function at(root, path) {
  let v = root;
  for (const part of path.split('.').filter(Boolean)) {
    if (v instanceof pj.Record) v = v.state;
    if (Array.isArray(v)) v = v[Number(part)];
    else if (v instanceof Map) v = v.has(part) ? v.get(part) : v.get(Number(part));
    else throw new Error(`${path}: cannot step into ${part}`);
  }
  return v;
}

const checks = {
  'hydra_config.ckpt': (root) => {
    const cfg = at(root, 'hyper_parameters.cfg');
    const model = at(cfg, '_content.model');
    const layers = at(model, '_content.layers');
    const items = at(layers, '_content');
    return {
      cfg_is_record: cfg instanceof pj.Record && cfg.name === 'omegaconf.dictconfig.DictConfig',
      model_parent_is_cfg: at(model, '_parent') === cfg,
      layers_parent_is_model: at(layers, '_parent') === model,
      items_parent_is_layers: items.length > 0 && items.every((n) => at(n, '_parent') === layers),
      name_parent_is_model: at(model, '_content.name._parent') === model,
      args_shared: cfg.args === model.args && cfg.args instanceof pj.Tuple && Object.isFrozen(cfg.args),
      reference_is_global: at(cfg, '_metadata.ref_type') === new pj.Global('typing.Any'),
    };
  },
  'lr_schedulers.pt': (root) => {
    const method = at(root, 'one_cycle.anneal_func');
    const owner = method.obj;
    const opt = at(owner, 'optimizer');
    const state = at(opt, 'state');
    const params = at(opt, 'param_groups.0.params');
    const swa = [...walk(root).references];
    return {
      method: method instanceof pj.Method && method.name === '_annealing_cos',
      owner_record: owner instanceof pj.Record && owner.name === 'torch.optim.lr_scheduler.OneCycleLR',
      owner_refers_back: at(owner, 'anneal_func') === method,
      phases_shared: at(owner, '_schedule_phases') === at(root, 'one_cycle._schedule_phases'),
      defaultdict: state instanceof Map && state.defaultFactory === 'dict',
      tensor_keys_are_params: [...state.keys()].every((k, i) => k === params[i]) && state.size === 2,
      static_method_reference: swa.includes('torch.optim.swa_utils.SWALR._cosine_anneal'),
      cyclic_method: at(root, 'cyclic.scale_fn') instanceof pj.Method,
    };
  },
  'sd_v1.ckpt': (root) => {
    const callbacks = at(root, 'callbacks');
    const key = new pj.Global('pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint');
    return {
      global_key: callbacks.has(key) && [...callbacks.keys()][0] === key,
      tensor_is_image_tensor: at(root, 'state_dict.betas') === image.get('state_dict.betas'),
    };
  },
  'yolov5_model.pt': (root) => {
    const model = at(root, 'model');
    return {
      model_record: model instanceof pj.Record && model.name === 'models.yolo.DetectionModel',
      conv_weight: at(model, '_modules.model._modules.0._modules.conv._parameters.weight') ===
        image.get('model.model.0.conv.weight'),
      non_persistent: at(model, '_non_persistent_buffers_set') instanceof Set,
    };
  },
};

let image;
(async () => {
  image = await pj.load(ckpt, { socket: sock, policy: 'inert', transport: 'inline' });
  const root = pj.objectTree(image);
  const { records, references, tensors } = walk(root);
  const scalars = {};
  for (const path of Object.keys(entry.scalars)) {
    const v = at(root, path);
    scalars[path] = typeof v === 'bigint' ? String(v) : v;
  }
  const stored = new Map([...image.tensors].map(([name, t]) => [t, name]));
  console.log(JSON.stringify({
    records, references, scalars,
    reached: [...tensors].map((t) => stored.get(t)).sort(),
    digests: Object.fromEntries([...image.tensors].map(([n, t]) => [n, sha(t)])),
    aliases: Object.fromEntries(image.aliases),
    checks: checks[entry.file](root),
  }));
})().catch((e) => { console.error(e); process.exit(3); });
"""

TREE_FILES = ["yolov5_model.pt", "sd_v1.ckpt", "hydra_config.ckpt", "lr_schedulers.pt"]


@needs_daemon
@pytest.mark.parametrize("name", TREE_FILES)
def test_object_tree_of_realworld_files(daemon, name):
    entry = next(e for e in json.loads((REALWORLD / "manifest.json").read_text())
                 if e["file"] == name)
    out = run_node(TREE_SCRIPT, daemon.socket_path, REALWORLD / name, json.dumps(entry))
    assert out["records"] == entry["records"]
    assert out["references"] == entry["references"]
    for path, want in entry["scalars"].items():
        assert out["scalars"][path] == want, path
    for tensor, want in entry["tensors"].items():
        stored = out["aliases"].get(tensor, tensor)
        assert out["digests"][stored] == want["sha256"], tensor
    # Every stored tensor is reached from the tree, as the very object the image holds.
    assert out["reached"] == sorted(out["digests"])
    assert out["checks"] and all(out["checks"].values()), out["checks"]


@needs_daemon
def test_cli_json_lists_records_and_references(daemon):
    proc = run_cli(daemon.socket_path, "--json", "--policy", "inert",
                   REALWORLD / "lr_schedulers.pt")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["records"] == ["torch.optim.lr_scheduler.CyclicLR",
                              "torch.optim.lr_scheduler.OneCycleLR", "torch.optim.sgd.SGD"]
    assert out["references"] == ["torch.optim.swa_utils.SWALR._cosine_anneal"]


# ---------------------------------------------------------------- mmap

MMAP_SCRIPT = """
const crypto = require('crypto');
const [sock, ...files] = process.argv.slice(1);
const sha = (t) => crypto.createHash('sha256').update(t.data).digest('hex');
const summary = (r) => Object.fromEntries([...r.tensors].map(([n, t]) =>
  [n, [t.dtype, t.shape, sha(t), !!t.mapped, !!t.complex128]]));
(async () => {
  const out = {};
  // One connection: mmap loads and copying loads in turn stay in step.
  const c = await pj.Client.connect({ socket: sock, fdPassing: true });
  for (const file of files) {
    const copied = await c.load(file, { policy: 'checkpoint' });
    const mapped = await c.load(file, { policy: 'checkpoint', mmap: true, transport: 'inline' });
    out[file] = { copied: summary(copied), mapped: summary(mapped),
                  header: Object.keys(JSON.parse(mapped.image.subarray(8,
                    8 + Number(mapped.image.readBigUInt64LE(0))).toString())),
                  aliases: [Object.fromEntries(copied.aliases), Object.fromEntries(mapped.aliases)] };
  }
  out.stats = await c.stats();
  c.close();
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(3); });
"""


@needs_daemon
def test_mmap_load_matches_copying_load(daemon):
    files = [ckpt for ckpt, _ in (case.values for case in load_cases())
             if ckpt.parent.name == "torch-2.11"]
    out = run_node(MMAP_SCRIPT, daemon.socket_path, *files)
    any_mapped = False
    for ckpt in files:
        got = out[str(ckpt)]
        assert got["aliases"][0] == got["aliases"][1], ckpt.name
        copied = {n: v[:3] + v[4:] for n, v in got["copied"].items()}
        mapped = {n: v[:3] + v[4:] for n, v in got["mapped"].items()}
        assert mapped == copied, ckpt.name  # names, dtypes, shapes, bytes, complex128
        assert not any(v[3] for v in got["copied"].values())
        for name, v in got["mapped"].items():
            # A mapped tensor is not in the image's header: it was read from the file.
            assert v[3] == (name not in got["header"]), f"{ckpt.name}: {name}"
        any_mapped = any_mapped or any(v[3] for v in got["mapped"].values())
    assert any_mapped, "no fixture had a tensor left in the file"
    assert out["stats"]["shm_objects"] == 0


@needs_daemon
def test_mmap_of_a_file_that_is_not_there(daemon, tmp_path):
    proc = run_cli(daemon.socket_path, "--mmap", tmp_path / "missing.pt")
    assert proc.returncode == 1 and proc.stderr.startswith("picklejail: io_error: "), proc.stderr
    proc = run_cli(daemon.socket_path, "--mmap", tmp_path)
    assert proc.returncode == 1 and "not a regular file" in proc.stderr, proc.stderr


# ---------------------------------------------------------------- against a scripted daemon

def safetensors(tensors, metadata=None, header_override=None):
    """A safetensors image: tensors is a list of (name, dtype, shape, raw bytes)."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if header_override is not None:
        header = header_override
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 64)
    return struct.pack("<Q", len(text)) + text + data


GOOD_TENSORS = [("a.weight", "F32", [2, 3], struct.pack("<6f", *range(6))),
                ("b", "I64", [2], struct.pack("<2q", 7, -1)),
                ("flag", "BOOL", [], b"\x01"),
                ("empty", "F16", [0], b"")]
GOOD = safetensors(GOOD_TENSORS, {"format": "pt", "tied": "b"})


class ScriptedDaemon:
    """Answers each request line with `respond(request)`: a list of byte strings, each sent
    on its own with a pause between them, so that the client sees those chunk boundaries."""

    def __init__(self, path):
        self.path = str(path)
        self.respond = None
        self.requests = []
        self.fds = []  # fds the client sent (SCM_RIGHTS), in order; a responder closes them
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self):
        self._server.close()

    def _serve(self):
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn):
        buffer = b""
        with conn:
            try:
                while True:
                    while b"\n" not in buffer:
                        data, fds, _, _ = socket.recv_fds(conn, 65536, 4)
                        self.fds.extend(fds)
                        if not data:
                            return
                        buffer += data
                    line, buffer = buffer.split(b"\n", 1)
                    request = json.loads(line)
                    self.requests.append(request)
                    for i, piece in enumerate(self.respond(request)):
                        if piece is None:  # hang up here
                            return
                        if i:
                            time.sleep(0.002)
                        conn.sendall(piece)
            except OSError:
                return


def run_scripted(scripted, *args):
    return run_cli(scripted.path, *args, timeout=SCRIPTED_TIMEOUT_S)


@pytest.fixture
def scripted(tmp_path):
    d = ScriptedDaemon(tmp_path / "scripted.sock")
    yield d
    d.close()


def reply_line(request, **fields):
    return json.dumps({"ok": True, "id": request.get("id"), **fields}).encode() + b"\n"


def inline(image, chunking, size=None):
    """A responder sending the load reply and the image split as `chunking` says."""
    def respond(request):
        assert request["op"] == "load" and request["transport"] == "inline"
        assert os.path.isabs(request["path"])
        stream = reply_line(request, size=len(image) if size is None else size,
                            tensors=4, transport="inline", format="zip") + image
        if chunking == "together":
            return [stream]
        if chunking == "bytes":
            return [stream[i:i + 1] for i in range(len(stream))]
        if chunking == "split-line":  # half a line, then the rest with all of the image
            return [stream[:10], stream[10:]]
        if chunking == "odd":  # the line's end and the image's start share a chunk
            cut = stream.index(b"\n") - 3
            return [stream[:cut], stream[cut:cut + 20], stream[cut + 20:cut + 90],
                    stream[cut + 90:]]
        raise AssertionError(chunking)
    return respond


@pytest.mark.parametrize("chunking", ["together", "bytes", "split-line", "odd"])
def test_inline_stream_in_any_chunking(scripted, tmp_path, chunking):
    scripted.respond = inline(GOOD, chunking)
    proc = run_scripted(scripted, "--json", "--transport", "inline", "some/relative.pt")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["aliases"] == {"tied": "b"}
    for name, dtype, shape, raw in GOOD_TENSORS:
        assert out["tensors"][name] == {"dtype": dtype, "shape": shape,
                                        "sha256": hashlib.sha256(raw).hexdigest()}
    assert scripted.requests[0]["path"] == str(Path.cwd() / "some/relative.pt")


def test_two_inline_loads_on_one_connection(scripted):
    """The bytes after an image belong to the next reply: nothing may be lost or reused."""
    other = safetensors([("x", "U8", [3], b"xyz")])
    images = iter([GOOD, other])

    def respond(request):
        image = next(images)
        return [reply_line(request, size=len(image), transport="inline") + image[:5], image[5:]]
    scripted.respond = respond
    result = run_node("""
        (async () => {
          const c = await pj.Client.connect({ socket: process.argv[1] });
          const [a, b] = await Promise.all([c.load('/a', { transport: 'inline' }),
                                            c.load('/b', { transport: 'inline' })]);
          c.close();
          console.log(JSON.stringify([[...a.tensors.keys()], b.tensors.get('x').data.toString()]));
        })().catch((e) => { console.error(e); process.exit(3); });
    """, scripted.path, timeout=SCRIPTED_TIMEOUT_S)
    assert result == [["a.weight", "b", "flag", "empty"], "xyz"]


def header_with(**changes):
    """GOOD's header with one entry changed."""
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, raw in GOOD_TENSORS:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    for name, value in changes.items():
        header[name] = value
    return header


DATA = b"".join(raw for *_, raw in GOOD_TENSORS)


def bad_header_image(header):
    return safetensors([("pad", "U8", [len(DATA)], DATA)], header_override=header)


BAD_IMAGES = {
    "short": b"\x01\x00\x00",
    "header-length-past-end": struct.pack("<Q", 1 << 40) + b"{}",
    "header-not-json": struct.pack("<Q", 3) + b"{x}",
    "header-not-object": struct.pack("<Q", 2) + b"[]",
    "header-not-utf8": struct.pack("<Q", 3) + b'"\xff"',
    "unknown-dtype": bad_header_image(header_with(b={"dtype": "I128", "shape": [2],
                                                     "data_offsets": [24, 40]})),
    "negative-dim": bad_header_image(header_with(b={"dtype": "I64", "shape": [-2],
                                                    "data_offsets": [24, 40]})),
    "float-dim": bad_header_image(header_with(b={"dtype": "I64", "shape": [2.5],
                                                 "data_offsets": [24, 40]})),
    "extra-field": bad_header_image(header_with(b={"dtype": "I64", "shape": [2],
                                                   "data_offsets": [24, 40], "x": 1})),
    "bytes-not-numel": bad_header_image(header_with(b={"dtype": "I64", "shape": [3],
                                                       "data_offsets": [24, 40]})),
    "offsets-past-end": bad_header_image(header_with(flag={"dtype": "BOOL", "shape": [],
                                                           "data_offsets": [41, 42]})),
    "overlap": safetensors([("pad", "U8", [6], b"abcdef")], header_override={
        "x": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
        "y": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}),
    "same-bytes-twice": safetensors([("pad", "U8", [4], b"abcd")], header_override={
        "x": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
        "y": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}}),
    "hole": bad_header_image(header_with(b={"dtype": "I64", "shape": [1],
                                            "data_offsets": [24, 32]})),
    "trailing-bytes": GOOD + b"\x00",
    "alias-to-nothing": safetensors(GOOD_TENSORS, {"format": "pt", "tied": "nope"}),
    "metadata-not-strings": safetensors(GOOD_TENSORS, {"format": 1}),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_invalid_image_is_rejected(scripted, name):
    scripted.respond = inline(BAD_IMAGES[name], "together")
    proc = run_scripted(scripted, "--transport", "inline", "/x.pt")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("picklejail: malformed: invalid safetensors image"), proc.stderr


def test_connection_closed_before_all_inline_bytes(scripted):
    scripted.respond = lambda r: [reply_line(r, size=len(GOOD) + 10, transport="inline") + GOOD,
                                  None]
    proc = run_scripted(scripted, "--transport", "inline", "/x.pt")
    assert proc.returncode == 1
    assert proc.stderr.startswith("picklejail: protocol_error: "), proc.stderr


def test_error_reply_carries_code_and_global(scripted):
    error = {"code": "forbidden_global", "global": "posix.system",
             "message": "at byte 2: global posix.system is not allowed by policy \"weights\""}

    def respond(request):  # the error line in two pieces
        line = json.dumps({"ok": False, "id": request["id"], "error": error}).encode() + b"\n"
        return [line[:30], line[30:]]
    scripted.respond = respond
    proc = run_scripted(scripted, "/x.pt")
    assert proc.returncode == 1
    assert proc.stderr == f"picklejail: forbidden_global: {error['message']}\n"


def test_client_timeout(scripted):
    scripted.respond = lambda r: [] if r["op"] == "load" else [reply_line(r, protocol=1)]
    result = run_node("""
        (async () => {
          const c = await pj.Client.connect({ socket: process.argv[1], timeout: 300 });
          await new Promise((r) => setTimeout(r, 500));   // idle between requests: no timeout
          const ping = await c.ping();
          const t0 = Date.now();
          const e = await c.load('/x.pt').catch((err) => err);
          c.close();
          console.log(JSON.stringify([ping.protocol, e.code, Date.now() - t0 < 5000]));
        })().catch((e) => { console.error(e); process.exit(3); });
    """, scripted.path, timeout=SCRIPTED_TIMEOUT_S)
    assert result == [1, "timeout", True]


def test_socket_from_environment_and_unavailable(scripted, tmp_path):
    scripted.respond = lambda r: [reply_line(r, version="9", protocol=1)]
    env = {**os.environ, "PICKLEJAIL_SOCKET": scripted.path}
    proc = subprocess.run([NODE, "-e", f"require({json.dumps(str(MODULE))}).ping()"
                           ".then((r) => console.log(JSON.stringify(r)))"],
                          capture_output=True, text=True, env=env, timeout=NODE_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"version": "9", "protocol": 1}
    proc = run_cli(tmp_path / "nobody-home.sock", "/x.pt")
    assert proc.returncode == 1 and proc.stderr.startswith("picklejail: unavailable: ")


def test_memfd_and_usage_errors(tmp_path):
    proc = run_cli(tmp_path / "s.sock", "--transport", "memfd", "/x.pt")
    assert proc.returncode == 1 and proc.stderr.startswith("picklejail: invalid_request: ")
    proc = run_cli(tmp_path / "s.sock")
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_metadata_keys_and_aliases():
    """Aliases are every __metadata__ key but picklejail's own, even one named picklejail.*."""
    meta = {"format": "pt", "picklejail.source_format": "zip", "picklejail.pickle_protocol": "b",
            "picklejail.later_version": "xyz", "picklejail.tied": "b", "tied": "a.weight",
            "picklejail.complex128": "[]"}
    image = safetensors(GOOD_TENSORS, meta)
    result = run_node("""
        const r = pj.parseImage(Buffer.from(process.argv[1], 'hex'));
        console.log(JSON.stringify({ aliases: Object.fromEntries(r.aliases),
                                     same: r.get('picklejail.tied') === r.tensors.get('b'),
                                     names: [...r.tensors.keys()] }));
    """, image.hex())
    assert result == {"aliases": {"picklejail.tied": "b", "tied": "a.weight"}, "same": True,
                      "names": ["a.weight", "b", "flag", "empty"]}


# ---------------------------------------------------------------- objectTree on made-up descriptions

TREE_OF = """
const [hex, select] = process.argv.slice(1);
const image = pj.parseImage(Buffer.from(hex, 'hex'));
if (select) image.select = JSON.parse(select);
let tree;
try { tree = pj.objectTree(image); } catch (e) {
  console.log(JSON.stringify({ error: [e instanceof pj.PicklejailError, e.code, e.message] }));
  process.exit(0);
}
const show = (v) => {   // iterative enough for these small trees
  if (typeof v === 'bigint') return { bigint: String(v) };
  if (v instanceof pj.Tuple) return { tuple: v.map(show), frozen: Object.isFrozen(v) };
  if (Array.isArray(v)) return v.map(show);
  if (v instanceof pj.Global) return { global: v.name };
  if (v instanceof pj.Complex) return { complex: [v.re, v.im] };
  if (Buffer.isBuffer(v)) return { bytes: v.toString('hex') };
  if (v instanceof Set) return { set: [...v].map(show) };
  if (v instanceof pj.Record) return { record: v.name, args: show(v.args), state: show(v.state) };
  if (v instanceof Map) return { map: [...v].map(([k, x]) => [show(k), show(x)]),
                                 factory: v.defaultFactory, attrs: v.attrs && show(v.attrs) };
  if (v && v.data) return { tensor: [...image.tensors].find(([, t]) => t === v)[0] };
  if (typeof v === 'number' && !Number.isFinite(v)) return { float: String(v) };
  return v;
};
console.log(JSON.stringify({ tree: show(tree) }));
"""


def tree_of(description, select=None, tensors=GOOD_TENSORS):
    text = description if isinstance(description, str) else json.dumps(description)
    image = safetensors(tensors, {"format": "pt", "tied": "b", "picklejail.object": text})
    args = [image.hex()] + ([json.dumps(select)] if select is not None else [])
    return run_node(TREE_OF, *args)


def test_object_tree_node_kinds():
    out = tree_of({"dict": [
        ["big", 9223372036854775807], ["wide", {"int": "ffffffffffffffffff7f"}],
        ["neg", {"int": "ff"}], ["nan", {"float": "nan"}], ["c", {"complex": [1.5, {"float": "-inf"}]}],
        ["raw", {"bytes": "AAH/"}], ["dt", {"dtype": "float16"}], ["dev", {"device": "cuda:1"}],
        ["s", {"set": [1, 2]}], ["t", {"tuple": [1, {"size": [2, 3]}]}],
        [{"tuple": [1, 2]}, "tuple key"], [{"global": "mod.Cls"}, {"counter": [["x", 3]]}],
        ["dd", {"defaultdict": [["k", []]], "factory": "list"}],
        ["od", {"odict": [["w", {"tensor": "a.weight", "id": 0, "dtype": "float32"}]],
                "attrs": {"dict": [["_metadata", {"odict": []}]]}}],
        ["tied", {"tensor": "tied", "id": 1, "dtype": "int64"}],
        ["again", {"tensor": "b", "id": 1, "dtype": "int64"}],
        ["sd", {"dict_of_tensors": ["flag", "empty"], "first_id": 5}],
    ]})
    entries = dict((json.dumps(k), v) for k, v in out["tree"]["map"])
    assert entries['"big"'] == {"bigint": "9223372036854775807"}  # exact, not rounded
    assert entries['"wide"'] == {"bigint": str((1 << 79) - 1)}
    assert entries['"neg"'] == {"bigint": "-1"}
    assert entries['"nan"'] == {"float": "NaN"}
    assert entries['"c"'] == {"complex": [1.5, None]}  # JSON.stringify writes -Infinity as null
    assert entries['"raw"'] == {"bytes": "0001ff"}
    assert entries['"dt"'] == {"global": "torch.float16"}
    assert entries['"dev"'] == {"record": "torch.device", "args": {"tuple": ["cuda:1"], "frozen": True},
                                "state": None}
    assert entries['"s"'] == {"set": [1, 2]}
    assert entries['"t"'] == {"tuple": [1, {"tuple": [2, 3], "frozen": True}], "frozen": True}
    assert entries[json.dumps({"tuple": [1, 2], "frozen": True})] == "tuple key"
    assert entries[json.dumps({"global": "mod.Cls"})]["map"] == [["x", 3]]
    assert entries['"dd"']["factory"] == "list"
    assert entries['"od"']["map"] == [["w", {"tensor": "a.weight"}]]
    assert entries['"od"']["attrs"]["map"] == [["_metadata", {"map": []}]]
    assert entries['"tied"'] == entries['"again"'] == {"tensor": "b"}  # an alias, one id
    assert entries['"sd"']["map"] == [["flag", {"tensor": "flag"}], ["empty", {"tensor": "empty"}]]


def test_object_tree_select_drops_left_out_tensors():
    description = {"dict": [["a", {"tensor": "a.weight", "id": 0, "dtype": "float32"}],
                            ["gone", {"tensor": "x.gone", "id": 1, "dtype": "float32"}],
                            ["list", [{"tensor": "x.gone", "id": 1, "dtype": "float32"}, 7]]]}
    out = tree_of(description, select=["a"])
    assert out["tree"]["map"] == [["a", {"tensor": "a.weight"}], ["list", [None, 7]]]
    # Without a selection, a tensor the image does not hold is an error.
    assert tree_of(description)["error"][:2] == [True, "malformed"]
    # A selection that names it means it should have been written.
    assert tree_of(description, select=["x"])["error"][:2] == [True, "malformed"]


def test_object_tree_cycles_and_shared():
    cyclic = {"shared": 0, "value": {"dict": [["self", {"ref": 0}],
                                              ["list", {"shared": 1, "value": [{"ref": 1}]}],
                                              ["again", {"ref": 1}]]}}
    out = run_node("""
        const meta = { format: 'pt', 'picklejail.object': process.argv[1] };
        const header = { __metadata__: meta };
        const text = Buffer.from(JSON.stringify(header));
        const image = Buffer.alloc(8 + text.length);
        image.writeBigUInt64LE(BigInt(text.length)); text.copy(image, 8);
        const root = pj.objectTree(pj.parseImage(image));
        const list = root.get('list');
        console.log(JSON.stringify([root.get('self') === root, list[0] === list,
                                    root.get('again') === list]));
    """, json.dumps(cyclic))
    assert out == [True, True, True]
    into_tuple = {"shared": 0, "value": {"tuple": [{"ref": 0}]}}
    error = tree_of(into_tuple)["error"]
    assert error[:2] == [True, "malformed"] and "contains itself" in error[2]
    assert tree_of({"ref": 0})["error"][:2] == [True, "malformed"]
    assert tree_of({"shared": 1, "value": []})["error"][:2] == [True, "malformed"]


@pytest.mark.parametrize("description", [
    {"mystery": 1}, {"int": "abc"}, {"bytes": "not base64!"}, {"float": "NaN"},
    {"object": "m.C", "args": [1]}, {"defaultdict": [], "factory": "os.system"},
    {"tensor": "a.weight", "id": 0, "dtype": "int64"},  # described as another dtype
    {"dict": [["a", {"tensor": "a.weight", "id": 0, "dtype": "float32"}],
              ["b", {"tensor": "b", "id": 0, "dtype": "int64"}]]},  # one id, two tensors
])
def test_object_tree_rejects_bad_nodes(description):
    error = tree_of(description)["error"]
    assert error[:2] == [True, "malformed"], error


def test_object_tree_deep_nesting_does_not_exhaust_the_stack(tmp_path):
    """Far deeper than the loader's 1,000 containers: the rebuild must not recurse."""
    depth = 100_000
    texts = {"lists": "[" * depth + "]" * depth,
             "tuples": '{"tuple":[' * depth + "]}" * depth,
             "records": '{"object":"m.C","state":' * depth + "null" + "}" * depth}
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    out = run_node("""
        const depthOf = (v, step) => { let n = 0; while (v !== undefined && v !== null) { v = step(v); n++; } return n; };
        const out = [];
        for (const file of process.argv.slice(1)) {
          const text = require('fs').readFileSync(file, 'utf8');
          const header = Buffer.from(JSON.stringify({ __metadata__: { 'picklejail.object': text } }));
          const image = Buffer.alloc(8 + header.length);
          image.writeBigUInt64LE(BigInt(header.length)); header.copy(image, 8);
          const root = pj.objectTree(pj.parseImage(image));
          out.push(depthOf(root, (v) => (v instanceof pj.Record ? v.state : v[0])));
        }
        console.log(JSON.stringify(out));
    """, *(tmp_path / name for name in texts))
    assert out == [depth, depth, depth]


# ---------------------------------------------------------------- mmap against a scripted daemon

def identity_of(fd):
    st = os.fstat(fd)
    return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def checkpoint_file(tmp_path):
    """A made-up file: 64 bytes of padding, then f32[4] at 64 and i64[2] at 128."""
    path = tmp_path / "ranges.pt"
    raw = b"\xee" * 64 + struct.pack("<4f", 1, 2, 3, 4) + b"\xee" * 48 + struct.pack("<2q", 5, -6)
    path.write_bytes(raw)
    return path, raw


FILE_TENSORS = {"f": {"dtype": "F32", "shape": [4], "file_offsets": [64, 80]},
                "g": {"dtype": "I64", "shape": [2], "file_offsets": [128, 144]}}


def ranges_responder(scripted, path, *, tensors=FILE_TENSORS, identity_change=None, before_reply=None):
    """Replies to an mmap load with a layout-only image for the fd it was sent."""
    def respond(request):
        assert request["op"] == "load" and request["fd"] is True and request["mmap"] is True
        assert "path" not in request and len(scripted.fds) == 1
        fd = scripted.fds.pop()
        try:
            assert os.fstat(fd).st_ino == os.stat(path).st_ino  # the client sent its file
            identity = {**identity_of(fd), **(identity_change or {})}
        finally:
            os.close(fd)
        meta = {"format": "pt", "tied_f": "f",
                "picklejail.file_ranges": json.dumps({"file": identity, "tensors": tensors},
                                                     separators=(",", ":"))}
        image = safetensors([("own", "U8", [3], b"abc")], meta)
        if before_reply:
            before_reply()
        return [reply_line(request, size=len(image), tensors=1 + len(tensors),
                           transport="inline") + image]
    return respond


MMAP_LOAD = """
const [sock, file] = process.argv.slice(1);
pj.load(file, { socket: sock, mmap: true, transport: 'inline' }).then((r) => {
  console.log(JSON.stringify({
    tensors: Object.fromEntries([...r.tensors].map(([n, t]) =>
      [n, [t.dtype, t.shape, t.data.toString('hex'), !!t.mapped]])),
    tied: r.get('tied_f') === r.tensors.get('f'),
    aligned: r.tensors.get('g').data.byteOffset % 64 === 0,
    identity: Object.fromEntries(Object.entries(r.fileRanges.identity).map(([k, v]) => [k, String(v)])),
  }));
}, (e) => console.log(JSON.stringify({ error: [e instanceof pj.PicklejailError, e.code, e.message] })));
"""


def test_mmap_reads_the_ranges_from_the_file_it_sent(scripted, tmp_path):
    path, raw = checkpoint_file(tmp_path)
    scripted.respond = ranges_responder(scripted, path)
    out = run_node(MMAP_LOAD, scripted.path, path, timeout=SCRIPTED_TIMEOUT_S)
    assert out["tensors"] == {
        "own": ["U8", [3], b"abc".hex(), False],
        "f": ["F32", [4], raw[64:80].hex(), True],
        "g": ["I64", [2], raw[128:144].hex(), True]}
    assert out["tied"] and out["aligned"]
    st = os.stat(path)  # nanosecond times above 2^53 come through exactly
    assert out["identity"] == {"dev": str(st.st_dev), "ino": str(st.st_ino), "size": str(len(raw)),
                               "mtime_ns": str(st.st_mtime_ns), "ctime_ns": str(st.st_ctime_ns)}


def test_mmap_of_a_file_changed_after_the_check(scripted, tmp_path):
    path, _ = checkpoint_file(tmp_path)

    def rewrite():  # same inode and size, new bytes and times, as a writer in place would
        with open(path, "r+b") as f:
            f.seek(70)
            f.write(b"\x01")
        os.utime(path, ns=(1, 10**18 + 123))
    scripted.respond = ranges_responder(scripted, path, before_reply=rewrite)
    out = run_node(MMAP_LOAD, scripted.path, path, timeout=SCRIPTED_TIMEOUT_S)
    assert out["error"][:2] == [True, "io_error"]
    assert "changed after the sandbox checked it" in out["error"][2]
    assert "mtime_ns" in out["error"][2]


@pytest.mark.parametrize("change", [{"ino": 1}, {"size": 1 << 60}, {"ctime_ns": 1}])
def test_mmap_identity_mismatch(scripted, tmp_path, change):
    path, _ = checkpoint_file(tmp_path)
    tensors = FILE_TENSORS if "size" not in change else \
        {"f": {"dtype": "F32", "shape": [4], "file_offsets": [64, 80]}}
    scripted.respond = ranges_responder(scripted, path, tensors=tensors, identity_change=change)
    out = run_node(MMAP_LOAD, scripted.path, path, timeout=SCRIPTED_TIMEOUT_S)
    assert out["error"][:2] == [True, "io_error"], out


BAD_RANGES = {
    "past-the-end": {"f": {"dtype": "F32", "shape": [4], "file_offsets": [144, 160]}},
    "empty": {"f": {"dtype": "F32", "shape": [0], "file_offsets": [64, 64]}},
    "wrong-length": {"f": {"dtype": "F32", "shape": [3], "file_offsets": [64, 80]}},
    "unaligned": {"f": {"dtype": "F32", "shape": [4], "file_offsets": [66, 82]}},
    "unknown-dtype": {"f": {"dtype": "I128", "shape": [1], "file_offsets": [64, 80]}},
    "extra-field": {"f": {"dtype": "F32", "shape": [4], "file_offsets": [64, 80], "x": 1}},
    "negative-offset": {"f": {"dtype": "U8", "shape": [4], "file_offsets": [-4, 0]}},
    "also-in-header": {"own": {"dtype": "U8", "shape": [3], "file_offsets": [64, 67]}},
}


@pytest.mark.parametrize("name", sorted(BAD_RANGES))
def test_mmap_bad_ranges_are_malformed(scripted, tmp_path, name):
    path, _ = checkpoint_file(tmp_path)
    scripted.respond = ranges_responder(scripted, path, tensors=BAD_RANGES[name])
    out = run_node(MMAP_LOAD, scripted.path, path, timeout=SCRIPTED_TIMEOUT_S)
    assert out["error"][:2] == [True, "malformed"], out


def test_file_ranges_without_mmap_are_refused(scripted, tmp_path):
    meta = {"format": "pt", "picklejail.file_ranges": json.dumps(
        {"file": {"dev": 1, "ino": 2, "size": 200, "mtime_ns": 3, "ctime_ns": 4},
         "tensors": FILE_TENSORS})}
    scripted.respond = inline(safetensors(GOOD_TENSORS, meta), "together")
    proc = run_scripted(scripted, "--transport", "inline", "/x.pt")
    assert proc.returncode == 1
    assert proc.stderr.startswith("picklejail: protocol_error: "), proc.stderr
    assert "mmap was not asked for" in proc.stderr
