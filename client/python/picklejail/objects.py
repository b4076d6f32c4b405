"""Inert stand-ins for the objects a pickle describes (docs/output-format.md).

Nothing here imports or calls what a file names: a `Record` is the data an
object was built from, a `Global` a class or function's name, a `Method` a
bound method's name and owner. `state_dict(record)` reads a pickled
torch.nn.Module's tensors the way `module.state_dict()` would.
"""

import collections

# Record's own attribute names; a state field of one of these names is
# reached through `record.state[...]`.
_OWN = frozenset({"name", "args", "kwargs", "state", "dictitems", "listitems", "cls"})


class Record:
    """An object kept as data: what it was built from, never the object itself.

    `name` is the class's "module.qualname", `args` the tuple it was created
    with (REDUCE or NEWOBJ), `kwargs` NEWOBJ_EX's keyword arguments, `state` what
    BUILD restored (usually the instance's __dict__; None when never built), and
    `dictitems` / `listitems` the items a dict or list subclass pickles after
    itself. A dict state's string keys read as attributes (`rec.learning_rate`).
    Equal records compare equal; hashing is by identity, as for most objects.
    """

    __slots__ = ("name", "args", "kwargs", "state", "dictitems", "listitems")

    def __init__(self, name, args=(), state=None, kwargs=None, dictitems=None, listitems=None):
        self.name = name
        self.args = args
        self.state = state
        self.kwargs = {} if kwargs is None else kwargs
        self.dictitems = {} if dictitems is None else dictitems
        self.listitems = [] if listitems is None else listitems

    @property
    def cls(self):
        """The class's "module.qualname" (the name this attribute had before `name`)."""
        return self.name

    def __getattr__(self, field):
        # Only called for names that are not slots: a dict state's fields.
        state = object.__getattribute__(self, "state")
        if field not in _OWN and isinstance(state, dict) and field in state:
            return state[field]
        raise AttributeError(f"{object.__getattribute__(self, 'name')} record has no field {field!r}")

    def _fields(self):
        return (self.name, self.args, self.kwargs, self.state, self.dictitems, self.listitems)

    def __eq__(self, other):
        if self is other:
            return True
        return isinstance(other, Record) and self._fields() == other._fields()

    __hash__ = object.__hash__

    def __repr__(self):
        return f"picklejail.Record({self.name!r}, args={self.args!r}, state={self.state!r})"


class Global:
    """A class, function or enum member the file holds by name ("module.qualname").

    The real object is never looked up. Hashable and equal by name, so a global
    used as a dict key (Lightning < 1.5 keyed callback state by class) works.
    """

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __eq__(self, other):
        return isinstance(other, Global) and self.name == other.name

    def __hash__(self):
        return hash((Global, self.name))

    def __repr__(self):
        return f"picklejail.Global({self.name!r})"


class Method:
    """getattr(record, name): a bound method stored as data (schedulers' anneal_func).

    `obj` is the record it was taken from. It is never callable: a file that
    calls one is refused when it is loaded.
    """

    __slots__ = ("name", "obj")

    def __init__(self, name, obj):
        self.name = name
        self.obj = obj

    def __eq__(self, other):
        return isinstance(other, Method) and self.name == other.name and self.obj is other.obj

    def __hash__(self):
        return hash((Method, self.name, id(self.obj)))

    def __repr__(self):
        return f"picklejail.Method({self.name!r}, of={type(self.obj).__name__})"


class ArrayKey:
    """A tensor used as a dict key, as the numpy backend gives it back.

    A torch optimizer pickled whole keys its `state` by Parameter; torch tensors
    hash by identity, numpy arrays not at all. `array` is the ndarray; keys are
    equal only to themselves, as the tensors were.
    """

    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array

    def __repr__(self):
        return f"picklejail.ArrayKey(shape={tuple(self.array.shape)}, dtype={self.array.dtype})"


def _module_dict(record):
    state = record.state if isinstance(record, Record) else None
    if not (isinstance(state, dict) and {"_parameters", "_buffers", "_modules"} <= state.keys()):
        raise TypeError(f"{getattr(record, 'name', type(record).__name__)} is not a pickled "
                        "torch.nn.Module (its state has no _parameters, _buffers and _modules)")
    return state


def _detached(tensor):
    detach = getattr(tensor, "detach", None)
    return detach() if detach is not None else tensor


def state_dict(record, prefix=""):
    """What `module.state_dict()` returns for the pickled module `record`.

    Pre-order, as torch walks it: a module's own parameters, then its
    persistent buffers, then each submodule under "name." (a submodule held
    twice is written under both names, as torch writes it); None entries are
    skipped, and tensors come back detached (plain tensors, not Parameters).
    """
    out = collections.OrderedDict()
    _save_module(record, prefix, out, set())
    return out


def _save_module(module, where, out, ancestors):
    if id(module) in ancestors:
        raise ValueError(f"module {where.rstrip('.') or '<root>'} contains itself")
    state = _module_dict(module)
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for name, tensor in (state["_parameters"] or {}).items():
        if tensor is not None:
            out[where + name] = _detached(tensor)
    for name, tensor in (state["_buffers"] or {}).items():
        if tensor is not None and name not in non_persistent:
            out[where + name] = _detached(tensor)
    ancestors.add(id(module))
    for name, child in (state["_modules"] or {}).items():
        if child is not None:
            _save_module(child, where + name + ".", out, ancestors)
    ancestors.discard(id(module))
