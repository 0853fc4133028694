//! A small, safe reader for the pickles CIFAR's python versions ship (and for the same
//! dictionaries re-pickled by Python 3 at protocols 2 to 4).
//!
//! This module owns the pickle virtual machine: it interprets only the opcodes such files
//! use and never executes anything. The only callables it knows are numpy's array
//! reconstruction (`_reconstruct`, `ndarray`, `dtype`) and `_codecs.encode` (how Python 3
//! writes raw bytes at protocol 2), each emulated by a few lines of Rust; every other
//! global is refused before anything happens.
//!
//! Hostile input cannot exhaust the stack or memory: every object lives in one arena
//! (`Vec<Obj>`) and containers, the stack and the memo hold indices into it, so nested,
//! self-referencing or cyclic structures need no recursion to build, drop or inspect.
//! Lengths are checked against the remaining input before anything is sliced, and the
//! number of objects and stack/memo cells is capped. Byte strings are kept as ranges of
//! the input, so the 150 MB pixel string of CIFAR-100 `train` is never copied here.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

/// Most objects one pickle may create. CIFAR-100 `train` (the largest official file)
/// needs about 150 000; the cap keeps a hostile file from building billions.
pub const MAX_OBJECTS: usize = 1 << 22;

/// Most stack pushes, marks and memo entries one pickle may make (each costs a word or
/// two of memory however small its opcode is).
pub const MAX_CELLS: usize = 1 << 24;

/// Most text one list of strings may expand to (CIFAR-100's 50 000 file names are
/// about 1.5 MB).
pub const MAX_TEXT_LIST_BYTES: usize = 64 << 20;

/// Unicode strings up to this many bytes are checked to be UTF-8 as they are read.
const EAGER_UTF8_CHECK: usize = 1 << 16;

/// numpy itself refuses more dimensions than this.
const MAX_NDIM: usize = 64;

/// Why a pickle was rejected, and at which byte (the offset of the offending opcode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickleError {
    /// Byte offset of the opcode being interpreted (the input length for a missing STOP).
    pub offset: usize,
    /// What was wrong, in words.
    pub reason: String,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.offset, self.reason)
    }
}

impl std::error::Error for PickleError {}

/// Opcodes, named as in CPython's `pickletools` (the fixture writer uses them too).
pub(crate) mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const BINFLOAT: u8 = b'G';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const REDUCE: u8 = b'R';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const PROTO: u8 = 0x80;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
}

/// The only globals a pickle may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    /// `numpy.core.multiarray._reconstruct` (or `numpy._core…` from numpy 2).
    Reconstruct,
    /// `numpy.ndarray`: only ever the first argument of `_reconstruct`.
    Ndarray,
    /// `numpy.dtype`.
    Dtype,
    /// `_codecs.encode`: Python 3 writes `bytes` at protocol 2 as
    /// `_codecs.encode(latin1_decoded_text, 'latin1')`.
    CodecsEncode,
}

impl Global {
    fn resolve(module: &[u8], name: &[u8]) -> Option<Self> {
        match (module, name) {
            (b"numpy.core.multiarray" | b"numpy._core.multiarray", b"_reconstruct") => {
                Some(Self::Reconstruct)
            }
            (b"numpy", b"ndarray") => Some(Self::Ndarray),
            (b"numpy", b"dtype") => Some(Self::Dtype),
            (b"_codecs", b"encode") => Some(Self::CodecsEncode),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Reconstruct => "numpy.core.multiarray._reconstruct",
            Self::Ndarray => "numpy.ndarray",
            Self::Dtype => "numpy.dtype",
            Self::CodecsEncode => "_codecs.encode",
        }
    }
}

/// A numpy element type: the kinds CIFAR-style arrays use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dtype {
    /// `b'u'` unsigned integer, `b'i'` signed integer, `b'f'` float, `b'b'` bool.
    pub kind: u8,
    /// Bytes per element (1, 2, 4 or 8).
    pub itemsize: usize,
    /// `b'|'` (not applicable: one-byte types) or `b'<'` (little-endian). Big-endian
    /// arrays are refused while parsing.
    pub byteorder: u8,
}

impl Dtype {
    /// numpy's `dtype.str` spelling: `"|u1"`, `"<i8"`, `"<f4"`…
    #[must_use]
    pub fn descr(&self) -> String {
        format!(
            "{}{}{}",
            char::from(self.byteorder),
            char::from(self.kind),
            self.itemsize
        )
    }

    /// True for numpy's `uint8`, the only pixel type CIFAR uses.
    #[must_use]
    pub fn is_u8(&self) -> bool {
        self.kind == b'u' && self.itemsize == 1
    }

    /// True for signed and unsigned integers of any width.
    #[must_use]
    pub fn is_integer(&self) -> bool {
        matches!(self.kind, b'u' | b'i')
    }

    /// Parses `u1`, `<i8`, `|u1`, `f4`… (what `numpy.dtype`'s first argument holds).
    fn parse(text: &[u8]) -> Option<Self> {
        let (order, rest) = match text.split_first() {
            Some((&c @ (b'<' | b'>' | b'|' | b'='), rest)) => (c, rest),
            _ => (b'=', text),
        };
        let (&kind, size) = rest.split_first()?;
        let itemsize = match size {
            b"1" => 1,
            b"2" => 2,
            b"4" => 4,
            b"8" => 8,
            _ => return None,
        };
        let ok = match kind {
            b'u' | b'i' => true,
            b'f' => itemsize >= 4,
            b'b' => itemsize == 1,
            _ => false,
        };
        ok.then_some(Self {
            kind,
            itemsize,
            byteorder: if itemsize == 1 { b'|' } else { order },
        })
    }
}

/// Bytes of a string object: a range of the input (no copy) or bytes made while
/// interpreting (`_codecs.encode`).
#[derive(Clone)]
enum Buf {
    Input(Range<usize>),
    Owned(Vec<u8>),
}

impl fmt::Debug for Buf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the contents: a pixel string is 150 MB.
        match self {
            Self::Input(r) => write!(f, "input[{}..{}]", r.start, r.end),
            Self::Owned(v) => write!(f, "owned({} bytes)", v.len()),
        }
    }
}

impl Buf {
    fn len(&self) -> usize {
        match self {
            Self::Input(r) => r.end.saturating_sub(r.start),
            Self::Owned(v) => v.len(),
        }
    }
}

/// One object in the arena. Containers hold arena indices, never objects, so no
/// operation on an `Obj` (drop, clone, debug) recurses.
#[derive(Debug, Clone)]
enum Obj {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Python 2 `str` / Python 3 `bytes`.
    Bytes(Buf),
    /// Unicode text, already checked to be UTF-8.
    Str(Buf),
    Tuple(Vec<usize>),
    List(Vec<usize>),
    /// Key/value pairs in insertion order; lookups take the last match (Python's
    /// "later assignment wins").
    Dict(Vec<(usize, usize)>),
    Global(Global),
    Dtype(Dtype),
    /// What `_reconstruct` returns: an array waiting for its BUILD.
    EmptyArray,
    Array {
        shape: Vec<usize>,
        dtype: Dtype,
        /// Arena index of the `Bytes` object holding the elements.
        data: usize,
    },
}

impl Obj {
    /// The kind with its article, for messages ("an int", "a list", "None").
    fn a_kind(&self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Bool(_) => "a bool",
            Self::Int(_) => "an int",
            Self::Float(_) => "a float",
            Self::Bytes(_) => "a byte string",
            Self::Str(_) => "a str",
            Self::Tuple(_) => "a tuple",
            Self::List(_) => "a list",
            Self::Dict(_) => "a dict",
            Self::Global(_) => "a global",
            Self::Dtype(_) => "a numpy dtype",
            Self::EmptyArray => "a numpy array without data",
            Self::Array { .. } => "a numpy array",
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Bool(_) => "bool",
            Self::Int(_) => "int",
            Self::Float(_) => "float",
            Self::Bytes(_) => "byte string",
            Self::Str(_) => "str",
            Self::Tuple(_) => "tuple",
            Self::List(_) => "list",
            Self::Dict(_) => "dict",
            Self::Global(_) => "global",
            Self::Dtype(_) => "numpy dtype",
            Self::EmptyArray => "numpy array without data",
            Self::Array { .. } => "numpy array",
        }
    }
}

/// A parsed pickle: the arena of objects and the one that STOP returned. Borrows the
/// input, whose byte strings it points into.
pub struct Pickle<'a> {
    input: &'a [u8],
    objs: Vec<Obj>,
    root: usize,
}

impl fmt::Debug for Pickle<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pickle")
            .field("objects", &self.objs.len())
            .field("root", &self.root().kind())
            .finish()
    }
}

impl<'a> Pickle<'a> {
    /// The object the pickle returns (for CIFAR files, a dict).
    #[must_use]
    pub fn root(&self) -> Value<'_> {
        Value {
            pickle: self,
            id: self.root,
        }
    }

    /// True when the pickle returns a dict.
    #[must_use]
    pub fn is_dict(&self) -> bool {
        matches!(self.obj(self.root), Obj::Dict(_))
    }

    /// The value of `key` in the top-level dict, matching a Python 2 byte-string key
    /// (`b"data"`) or a Python 3 unicode one (`"data"`). `None` when the top level is
    /// not a dict or has no such key.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<Value<'_>> {
        self.root().get(key)
    }

    /// Number of objects in the arena (for tests and diagnostics).
    #[must_use]
    pub fn object_count(&self) -> usize {
        self.objs.len()
    }

    fn obj(&self, id: usize) -> &Obj {
        // Every index stored anywhere came from the arena, so this never misses; the
        // fallback only keeps the accessors free of panics.
        self.objs.get(id).unwrap_or(&Obj::None)
    }

    fn bytes_of(&self, buf: &'a Buf) -> &'a [u8] {
        match buf {
            Buf::Input(r) => self.input.get(r.clone()).unwrap_or_default(),
            Buf::Owned(v) => v,
        }
    }
}

/// A handle on one object of a [`Pickle`], with typed accessors.
#[derive(Clone, Copy)]
pub struct Value<'p> {
    pickle: &'p Pickle<'p>,
    id: usize,
}

impl fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Value({} #{})", self.kind(), self.id)
    }
}

/// A numpy array read from a pickle: C-order elements, little-endian.
#[derive(Debug, Clone, Copy)]
pub struct NdArray<'p> {
    /// Length of each dimension, outermost first.
    pub shape: &'p [usize],
    /// Element type (never big-endian: those are refused while parsing).
    pub dtype: Dtype,
    /// `product(shape) * dtype.itemsize` bytes (checked while parsing).
    pub data: &'p [u8],
}

impl NdArray<'_> {
    /// The elements of an integer array as `i64`s.
    pub fn to_i64_vec(&self) -> Result<Vec<i64>, String> {
        if !self.dtype.is_integer() {
            return Err(format!(
                "array has dtype '{}', not an integer type",
                self.dtype.descr()
            ));
        }
        let size = self.dtype.itemsize;
        if !(1..=8).contains(&size) {
            return Err(format!("array has {size}-byte elements"));
        }
        let signed = self.dtype.kind == b'i';
        let mut out = Vec::with_capacity(self.data.len() / size.max(1));
        for (i, chunk) in self.data.chunks_exact(size).enumerate() {
            let mut word = [0u8; 8];
            // Sign-extend signed values; unsigned ones are zero-extended.
            let negative = signed && chunk.last().is_some_and(|&b| b & 0x80 != 0);
            if negative {
                word = [0xff; 8];
            }
            word[..size].copy_from_slice(chunk);
            let v = i64::from_le_bytes(word);
            if !signed && size == 8 && v < 0 {
                return Err(format!("element {i} ({}) does not fit in i64", v as u64));
            }
            out.push(v);
        }
        Ok(out)
    }
}

impl<'p> Value<'p> {
    fn obj(&self) -> &'p Obj {
        self.pickle.obj(self.id)
    }

    fn at(&self, id: usize) -> Value<'p> {
        Value {
            pickle: self.pickle,
            id,
        }
    }

    /// Python-ish name of the object's type, for messages ("list", "dict", "int"…).
    #[must_use]
    pub fn kind(&self) -> &'static str {
        self.obj().kind()
    }

    /// [`Value::kind`] with its article, for messages: "an int", "a list", "None".
    #[must_use]
    pub fn described(&self) -> &'static str {
        self.obj().a_kind()
    }

    /// The integer, if this is a Python `int`.
    #[must_use]
    pub fn as_int(&self) -> Option<i64> {
        match self.obj() {
            Obj::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// The number, if this is a Python `float`.
    #[must_use]
    pub fn as_float(&self) -> Option<f64> {
        match self.obj() {
            Obj::Float(v) => Some(*v),
            _ => None,
        }
    }

    /// The bytes of a Python 2 `str` / Python 3 `bytes`.
    #[must_use]
    pub fn as_bytes(&self) -> Option<&'p [u8]> {
        match self.obj() {
            Obj::Bytes(b) => Some(self.pickle.bytes_of(b)),
            _ => None,
        }
    }

    /// The bytes of a string of either type, borrowed (UTF-8 for unicode, whatever
    /// Python 2 stored for `str`).
    #[must_use]
    pub fn text_bytes(&self) -> Option<&'p [u8]> {
        match self.obj() {
            Obj::Str(b) | Obj::Bytes(b) => Some(self.pickle.bytes_of(b)),
            _ => None,
        }
    }

    /// The text of a unicode string.
    #[must_use]
    pub fn as_str(&self) -> Option<&'p str> {
        match self.obj() {
            Obj::Str(b) => std::str::from_utf8(self.pickle.bytes_of(b)).ok(),
            _ => None,
        }
    }

    /// Text of either string type, decoded as UTF-8 with invalid sequences replaced
    /// (Python 2 `str` is bytes; unicode over 64 KiB is not checked while parsing).
    #[must_use]
    pub fn as_text(&self) -> Option<String> {
        match self.obj() {
            Obj::Str(b) | Obj::Bytes(b) => {
                Some(String::from_utf8_lossy(self.pickle.bytes_of(b)).into_owned())
            }
            _ => None,
        }
    }

    /// Items of a list or tuple.
    #[must_use]
    pub fn items(&self) -> Option<Vec<Value<'p>>> {
        self.item_ids()
            .map(|ids| ids.iter().map(|&id| self.at(id)).collect())
    }

    fn item_ids(&self) -> Option<&'p [usize]> {
        match self.obj() {
            Obj::List(v) | Obj::Tuple(v) => Some(v),
            _ => None,
        }
    }

    /// The value of `key` in a dict, matching byte-string or unicode keys.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<Value<'p>> {
        let Obj::Dict(pairs) = self.obj() else {
            return None;
        };
        pairs.iter().rev().find_map(|&(k, v)| {
            let matches = match self.pickle.obj(k) {
                Obj::Bytes(b) | Obj::Str(b) => self.pickle.bytes_of(b) == key.as_bytes(),
                _ => false,
            };
            matches.then(|| self.at(v))
        })
    }

    /// Keys of a dict in insertion order (empty for anything else). Handles, not text:
    /// a hostile dict can repeat one huge key through the memo, so callers convert only
    /// what they show.
    #[must_use]
    pub fn keys(&self) -> Vec<Value<'p>> {
        let Obj::Dict(pairs) = self.obj() else {
            return Vec::new();
        };
        pairs.iter().map(|&(k, _)| self.at(k)).collect()
    }

    /// The array, if this is a numpy array with its data.
    #[must_use]
    pub fn as_array(&self) -> Option<NdArray<'p>> {
        match self.obj() {
            Obj::Array { shape, dtype, data } => match self.pickle.obj(*data) {
                Obj::Bytes(b) => Some(NdArray {
                    shape,
                    dtype: *dtype,
                    data: self.pickle.bytes_of(b),
                }),
                _ => None,
            },
            _ => None,
        }
    }

    /// A list (or tuple) of ints, or a one-dimensional integer numpy array, as `i64`s.
    /// The error says what was found instead.
    pub fn as_int_list(&self) -> Result<Vec<i64>, String> {
        if let Some(array) = self.as_array() {
            if array.shape.len() != 1 {
                return Err(format!(
                    "is an array of shape {:?}, not one-dimensional",
                    array.shape
                ));
            }
            return array.to_i64_vec();
        }
        let ids = self
            .item_ids()
            .ok_or_else(|| format!("is {}, not a list of integers", self.described()))?;
        ids.iter()
            .map(|&id| self.at(id))
            .enumerate()
            .map(|(i, item)| {
                item.as_int()
                    .ok_or_else(|| format!("item {i} is {}, not an integer", item.described()))
            })
            .collect()
    }

    /// A list (or tuple) of strings of either type, as text. Refused above
    /// [`MAX_TEXT_LIST_BYTES`] in all: the memo lets a small file list one huge string
    /// millions of times.
    pub fn as_str_list(&self) -> Result<Vec<String>, String> {
        let ids = self
            .item_ids()
            .ok_or_else(|| format!("is {}, not a list of strings", self.described()))?;
        let items = || ids.iter().map(|&id| self.at(id));
        let total = items()
            .map(|item| item.text_bytes().map_or(0, <[u8]>::len))
            .try_fold(0usize, |acc, n| acc.checked_add(n))
            .unwrap_or(usize::MAX);
        if total > MAX_TEXT_LIST_BYTES {
            return Err(format!(
                "holds {total} bytes of text, more than the {MAX_TEXT_LIST_BYTES} accepted"
            ));
        }
        items()
            .enumerate()
            .map(|(i, item)| {
                item.as_text()
                    .ok_or_else(|| format!("item {i} is {}, not a string", item.described()))
            })
            .collect()
    }
}

/// Parses a protocol 2–4 pickle, refusing anything but plain data and numpy arrays.
/// Bytes after STOP are ignored (as Python does).
pub fn parse(bytes: &[u8]) -> Result<Pickle<'_>, PickleError> {
    Machine {
        input: bytes,
        pos: 0,
        op_at: 0,
        objs: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        cells: 0,
    }
    .run()
}

/// The unpickler's state while interpreting.
struct Machine<'a> {
    input: &'a [u8],
    /// Next byte to read.
    pos: usize,
    /// Offset of the opcode being interpreted (what errors report).
    op_at: usize,
    objs: Vec<Obj>,
    stack: Vec<usize>,
    /// Stack lengths at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, usize>,
    /// Stack pushes, marks and memo entries so far (see [`MAX_CELLS`]).
    cells: usize,
}

type Res<T> = Result<T, PickleError>;

impl<'a> Machine<'a> {
    fn err(&self, reason: impl Into<String>) -> PickleError {
        PickleError {
            offset: self.op_at,
            reason: reason.into(),
        }
    }

    fn remaining(&self) -> usize {
        self.input.len().saturating_sub(self.pos)
    }

    /// The next `n` argument bytes of a fixed-size opcode.
    fn fixed(&mut self, n: usize, what: &str) -> Res<&'a [u8]> {
        let rem = self.remaining();
        if n > rem {
            return Err(self.err(format!(
                "truncated: {what} needs {n} argument bytes, only {rem} remain"
            )));
        }
        let start = self.pos;
        self.pos += n;
        Ok(self.input.get(start..self.pos).unwrap_or_default())
    }

    fn arg<const N: usize>(&mut self, what: &str) -> Res<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.fixed(N, what)?);
        Ok(out)
    }

    /// A range of `len` payload bytes, checked against the input before anything is
    /// sliced or allocated.
    fn payload(&mut self, len: u64) -> Res<Range<usize>> {
        let rem = self.remaining();
        match usize::try_from(len) {
            Ok(n) if n <= rem => {
                let start = self.pos;
                self.pos += n;
                Ok(start..self.pos)
            }
            _ => Err(self.err(format!("length {len} exceeds the remaining {rem} bytes"))),
        }
    }

    /// A newline-terminated argument of GLOBAL (without the newline).
    fn line(&mut self) -> Res<&'a [u8]> {
        let rest = self.input.get(self.pos..).unwrap_or_default();
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.err("truncated: GLOBAL argument has no terminating newline"));
        };
        self.pos += n + 1;
        Ok(rest.get(..n).unwrap_or_default())
    }

    fn charge(&mut self, n: usize) -> Res<()> {
        self.cells = self.cells.saturating_add(n);
        if self.cells > MAX_CELLS {
            return Err(self.err(format!(
                "more than {MAX_CELLS} stack and memo operations (not a data file annt can read)"
            )));
        }
        Ok(())
    }

    fn alloc(&mut self, obj: Obj) -> Res<usize> {
        if self.objs.len() >= MAX_OBJECTS {
            return Err(self.err(format!(
                "more than {MAX_OBJECTS} objects (not a data file annt can read)"
            )));
        }
        self.objs.push(obj);
        Ok(self.objs.len() - 1)
    }

    fn push(&mut self, id: usize) -> Res<()> {
        self.charge(1)?;
        self.stack.push(id);
        Ok(())
    }

    fn push_new(&mut self, obj: Obj) -> Res<()> {
        let id = self.alloc(obj)?;
        self.push(id)
    }

    /// Stack length at the innermost MARK: items below it belong to an outer frame.
    fn base(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Res<usize> {
        if self.stack.len() <= self.base() {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&self) -> Res<usize> {
        if self.stack.len() <= self.base() {
            return Err(self.err("stack underflow"));
        }
        self.stack
            .last()
            .copied()
            .ok_or_else(|| self.err("stack underflow"))
    }

    /// Removes the innermost MARK and returns the items pushed since.
    fn pop_mark(&mut self) -> Res<Vec<usize>> {
        let Some(base) = self.marks.pop() else {
            return Err(self.err("no MARK on the stack"));
        };
        Ok(self.stack.split_off(base.min(self.stack.len())))
    }

    fn obj(&self, id: usize) -> &Obj {
        self.objs.get(id).unwrap_or(&Obj::None)
    }

    fn obj_mut(&mut self, id: usize) -> Res<&mut Obj> {
        if id >= self.objs.len() {
            return Err(self.err("internal: dangling object index"));
        }
        Ok(&mut self.objs[id])
    }

    fn bytes_of<'s>(&'s self, buf: &'s Buf) -> &'s [u8] {
        match buf {
            Buf::Input(r) => self.input.get(r.clone()).unwrap_or_default(),
            Buf::Owned(v) => v,
        }
    }

    /// Bytes of a string object of either type (module/name of STACK_GLOBAL, dtype
    /// descriptors, encodings), borrowed: never copied however long.
    fn text_of(&self, id: usize) -> Option<&[u8]> {
        match self.obj(id) {
            Obj::Bytes(b) | Obj::Str(b) => Some(self.bytes_of(b)),
            _ => None,
        }
    }

    fn memo_put(&mut self, key: u32) -> Res<()> {
        let top = self.top()?;
        self.charge(1)?;
        self.memo.insert(key, top);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Res<()> {
        let Some(&id) = self.memo.get(&key) else {
            return Err(self.err(format!("memo key {key} was never stored")));
        };
        self.push(id)
    }

    fn resolve(&self, module: &[u8], name: &[u8]) -> Res<Global> {
        Global::resolve(module, name).ok_or_else(|| {
            self.err(format!(
                "global '{}.{}' is not allowed (only numpy array reconstruction)",
                printable(module),
                printable(name)
            ))
        })
    }

    fn run(mut self) -> Res<Pickle<'a>> {
        match self.input.first() {
            Some(&op::PROTO) => {}
            Some(_) => {
                return Err(self.err(
                    "protocol 0/1 pickles are not supported (the file does not start with \
                     PROTO 2-4)",
                ));
            }
            None => return Err(self.err("truncated: no STOP opcode")),
        }
        loop {
            self.op_at = self.pos;
            let Some(&code) = self.input.get(self.pos) else {
                return Err(PickleError {
                    offset: self.input.len(),
                    reason: "truncated: no STOP opcode".into(),
                });
            };
            self.pos += 1;
            if code == op::STOP {
                let root = self.pop()?;
                return Ok(Pickle {
                    input: self.input,
                    objs: self.objs,
                    root,
                });
            }
            self.step(code)?;
        }
    }

    /// Interprets one opcode (its byte already consumed).
    fn step(&mut self, code: u8) -> Res<()> {
        match code {
            op::PROTO => {
                let [v] = self.arg::<1>("PROTO")?;
                match v {
                    2..=4 => {}
                    0 | 1 => return Err(self.err("protocol 0/1 pickles are not supported")),
                    _ => {
                        return Err(
                            self.err(format!("protocol {v} is not supported (only 2 to 4)"))
                        );
                    }
                }
            }
            op::FRAME => {
                // Frames only batch I/O; the payload is ordinary opcodes that follow.
                let len = u64::from_le_bytes(self.arg::<8>("FRAME")?);
                let rem = self.remaining();
                if !usize::try_from(len).is_ok_and(|n| n <= rem) {
                    return Err(self.err(format!("length {len} exceeds the remaining {rem} bytes")));
                }
            }
            op::MARK => {
                self.charge(1)?;
                self.marks.push(self.stack.len());
            }
            op::POP => {
                // As in CPython: an empty frame pops its MARK instead.
                if self.stack.len() > self.base() {
                    self.pop()?;
                } else if self.marks.pop().is_none() {
                    return Err(self.err("stack underflow"));
                }
            }
            op::POP_MARK => {
                self.pop_mark()?;
            }
            op::DUP => {
                let top = self.top()?;
                self.push(top)?;
            }
            op::NONE => self.push_new(Obj::None)?,
            op::NEWTRUE => self.push_new(Obj::Bool(true))?,
            op::NEWFALSE => self.push_new(Obj::Bool(false))?,
            op::BININT => {
                let v = i32::from_le_bytes(self.arg::<4>("BININT")?);
                self.push_new(Obj::Int(i64::from(v)))?;
            }
            op::BININT1 => {
                let [v] = self.arg::<1>("BININT1")?;
                self.push_new(Obj::Int(i64::from(v)))?;
            }
            op::BININT2 => {
                let v = u16::from_le_bytes(self.arg::<2>("BININT2")?);
                self.push_new(Obj::Int(i64::from(v)))?;
            }
            op::LONG1 => {
                let [n] = self.arg::<1>("LONG1")?;
                let r = self.payload(u64::from(n))?;
                if n > 8 {
                    return Err(self.err(format!(
                        "LONG1 of {n} bytes is wider than 64 bits (not supported)"
                    )));
                }
                let bytes = self.input.get(r).unwrap_or_default();
                let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
                let mut word = if negative { [0xff; 8] } else { [0; 8] };
                word[..bytes.len()].copy_from_slice(bytes);
                self.push_new(Obj::Int(i64::from_le_bytes(word)))?;
            }
            op::BINFLOAT => {
                let v = f64::from_be_bytes(self.arg::<8>("BINFLOAT")?);
                self.push_new(Obj::Float(v))?;
            }
            op::SHORT_BINSTRING => {
                let [n] = self.arg::<1>("SHORT_BINSTRING")?;
                let r = self.payload(u64::from(n))?;
                self.push_new(Obj::Bytes(Buf::Input(r)))?;
            }
            op::BINSTRING => {
                let n = i32::from_le_bytes(self.arg::<4>("BINSTRING")?);
                let Ok(n) = u64::try_from(n) else {
                    return Err(self.err(format!("BINSTRING has negative length {n}")));
                };
                let r = self.payload(n)?;
                self.push_new(Obj::Bytes(Buf::Input(r)))?;
            }
            op::SHORT_BINBYTES => {
                let [n] = self.arg::<1>("SHORT_BINBYTES")?;
                let r = self.payload(u64::from(n))?;
                self.push_new(Obj::Bytes(Buf::Input(r)))?;
            }
            op::BINBYTES => {
                let n = u32::from_le_bytes(self.arg::<4>("BINBYTES")?);
                let r = self.payload(u64::from(n))?;
                self.push_new(Obj::Bytes(Buf::Input(r)))?;
            }
            op::SHORT_BINUNICODE => {
                let [n] = self.arg::<1>("SHORT_BINUNICODE")?;
                self.unicode(u64::from(n))?;
            }
            op::BINUNICODE => {
                let n = u32::from_le_bytes(self.arg::<4>("BINUNICODE")?);
                self.unicode(u64::from(n))?;
            }
            op::EMPTY_TUPLE => self.push_new(Obj::Tuple(Vec::new()))?,
            op::TUPLE => {
                let items = self.pop_mark()?;
                self.push_new(Obj::Tuple(items))?;
            }
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let n = usize::from(code - op::TUPLE1) + 1;
                if self.stack.len() < self.base() + n {
                    return Err(self.err("stack underflow"));
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push_new(Obj::Tuple(items))?;
            }
            op::EMPTY_LIST => self.push_new(Obj::List(Vec::new()))?,
            op::LIST => {
                let items = self.pop_mark()?;
                self.push_new(Obj::List(items))?;
            }
            op::APPEND => {
                let v = self.pop()?;
                self.extend_list(vec![v])?;
            }
            op::APPENDS => {
                let items = self.pop_mark()?;
                self.extend_list(items)?;
            }
            op::EMPTY_DICT => self.push_new(Obj::Dict(Vec::new()))?,
            op::DICT => {
                let items = self.pop_mark()?;
                let pairs = self.pairs(&items, "DICT")?;
                self.push_new(Obj::Dict(pairs))?;
            }
            op::SETITEM => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.extend_dict(vec![(k, v)])?;
            }
            op::SETITEMS => {
                let items = self.pop_mark()?;
                let pairs = self.pairs(&items, "SETITEMS")?;
                self.extend_dict(pairs)?;
            }
            op::BINPUT => {
                let [k] = self.arg::<1>("BINPUT")?;
                self.memo_put(u32::from(k))?;
            }
            op::LONG_BINPUT => {
                let k = u32::from_le_bytes(self.arg::<4>("LONG_BINPUT")?);
                self.memo_put(k)?;
            }
            op::MEMOIZE => {
                let Ok(k) = u32::try_from(self.memo.len()) else {
                    return Err(self.err("memo is full"));
                };
                self.memo_put(k)?;
            }
            op::BINGET => {
                let [k] = self.arg::<1>("BINGET")?;
                self.memo_get(u32::from(k))?;
            }
            op::LONG_BINGET => {
                let k = u32::from_le_bytes(self.arg::<4>("LONG_BINGET")?);
                self.memo_get(k)?;
            }
            op::GLOBAL => {
                let module = self.line()?;
                let name = self.line()?;
                let g = self.resolve(module, name)?;
                self.push_new(Obj::Global(g))?;
            }
            op::STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                let g = match (self.text_of(module), self.text_of(name)) {
                    (Some(m), Some(n)) => self.resolve(m, n)?,
                    _ => return Err(self.err("STACK_GLOBAL needs two strings")),
                };
                self.push_new(Obj::Global(g))?;
            }
            op::REDUCE => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let result = self.reduce(callable, args)?;
                self.push_new(result)?;
            }
            op::BUILD => {
                let state = self.pop()?;
                let target = self.top()?;
                self.build(target, state)?;
            }
            other => {
                let shown = if other.is_ascii_graphic() {
                    format!(" ('{}')", char::from(other))
                } else {
                    String::new()
                };
                return Err(self.err(format!("unsupported opcode 0x{other:02x}{shown}")));
            }
        }
        Ok(())
    }

    fn unicode(&mut self, len: u64) -> Res<()> {
        let r = self.payload(len)?;
        // Names and keys are checked now. Longer strings are in practice pixels that
        // Python 3 wrote through `_codecs.encode`, which checks its own latin1 subset of
        // UTF-8 several times faster than a full check; validating 300 MB twice would
        // double the parse time. Other consumers check (`Value::as_str`) or replace
        // (`Value::as_text`) invalid sequences.
        if r.len() <= EAGER_UTF8_CHECK
            && std::str::from_utf8(self.input.get(r.clone()).unwrap_or_default()).is_err()
        {
            return Err(self.err("unicode string is not valid UTF-8"));
        }
        self.push_new(Obj::Str(Buf::Input(r)))
    }

    fn pairs(&self, items: &[usize], what: &str) -> Res<Vec<(usize, usize)>> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err(format!(
                "{what} has an odd number of items ({}): a key without a value",
                items.len()
            )));
        }
        Ok(items.chunks_exact(2).map(|kv| (kv[0], kv[1])).collect())
    }

    fn extend_list(&mut self, items: Vec<usize>) -> Res<()> {
        let target = self.top()?;
        let kind = self.obj(target).a_kind();
        match self.obj_mut(target)? {
            Obj::List(list) => {
                list.extend(items);
                Ok(())
            }
            _ => Err(self.err(format!("APPEND to {kind}, not a list"))),
        }
    }

    fn extend_dict(&mut self, pairs: Vec<(usize, usize)>) -> Res<()> {
        let target = self.top()?;
        let kind = self.obj(target).a_kind();
        match self.obj_mut(target)? {
            Obj::Dict(dict) => {
                dict.extend(pairs);
                Ok(())
            }
            _ => Err(self.err(format!("SETITEM on {kind}, not a dict"))),
        }
    }

    /// Items of a tuple of exactly `N` elements, or `None` (without copying a hostile
    /// giant tuple).
    fn tuple_n<const N: usize>(&self, id: usize) -> Option<[usize; N]> {
        match self.obj(id) {
            Obj::Tuple(items) => items.as_slice().try_into().ok(),
            _ => None,
        }
    }

    /// Calls one of the allowed globals.
    fn reduce(&mut self, callable: usize, args: usize) -> Res<Obj> {
        let Obj::Global(g) = *self.obj(callable) else {
            return Err(self.err(format!(
                "REDUCE on {}: only the allowed numpy globals can be called",
                self.obj(callable).a_kind()
            )));
        };
        let Obj::Tuple(arg_items) = self.obj(args) else {
            return Err(self.err(format!(
                "REDUCE arguments of {} are {}, not a tuple",
                g.name(),
                self.obj(args).a_kind()
            )));
        };
        let argc = arg_items.len();
        match g {
            Global::Reconstruct => {
                let Some([cls, _shape, _code]) = self.tuple_n::<3>(args) else {
                    return Err(self.err(format!("_reconstruct takes 3 arguments, got {argc}")));
                };
                if !matches!(self.obj(cls), Obj::Global(Global::Ndarray)) {
                    return Err(
                        self.err("_reconstruct of anything but numpy.ndarray is not supported")
                    );
                }
                Ok(Obj::EmptyArray)
            }
            Global::Dtype => {
                let first = match self.obj(args) {
                    Obj::Tuple(items) if (1..=3).contains(&items.len()) => items[0],
                    _ => {
                        return Err(
                            self.err(format!("numpy.dtype takes 1 to 3 arguments, got {argc}"))
                        );
                    }
                };
                let Some(descr) = self.text_of(first) else {
                    return Err(self.err(format!(
                        "numpy.dtype of {} is not supported",
                        self.obj(first).a_kind()
                    )));
                };
                Dtype::parse(descr).map(Obj::Dtype).ok_or_else(|| {
                    self.err(format!(
                        "dtype '{}' is not supported (only integer and float arrays)",
                        printable(descr)
                    ))
                })
            }
            Global::CodecsEncode => {
                let Some([text, encoding]) = self.tuple_n::<2>(args) else {
                    return Err(
                        self.err(format!("_codecs.encode takes 2 arguments here, got {argc}"))
                    );
                };
                let enc = self.text_of(encoding).unwrap_or_default();
                if !(enc.eq_ignore_ascii_case(b"latin1") || enc.eq_ignore_ascii_case(b"latin-1")) {
                    return Err(self.err(format!(
                        "_codecs.encode to '{}' is not supported (only latin1)",
                        printable(enc)
                    )));
                }
                let Obj::Str(buf) = self.obj(text) else {
                    return Err(self.err(format!(
                        "_codecs.encode of {}, not a str",
                        self.obj(text).a_kind()
                    )));
                };
                let out = latin1_from_utf8(self.bytes_of(buf)).map_err(|e| self.err(e))?;
                Ok(Obj::Bytes(Buf::Owned(out)))
            }
            Global::Ndarray => {
                Err(self.err("numpy.ndarray cannot be called directly (only through _reconstruct)"))
            }
        }
    }

    /// Applies `__setstate__` of a dtype or an array.
    fn build(&mut self, target: usize, state: usize) -> Res<()> {
        match self.obj(target) {
            Obj::Dtype(d) => {
                let d = self.dtype_state(*d, state)?;
                *self.obj_mut(target)? = Obj::Dtype(d);
                Ok(())
            }
            Obj::EmptyArray => {
                let array = self.array_state(state)?;
                *self.obj_mut(target)? = array;
                Ok(())
            }
            Obj::Array { .. } => Err(self.err("BUILD on an array that already has its data")),
            other => Err(self.err(format!("BUILD on {} is not supported", other.a_kind()))),
        }
    }

    /// `dtype.__setstate__((version, byteorder, subarray, names, fields, elsize,
    /// alignment, flags[, metadata]))`: only the byte order matters for plain types.
    fn dtype_state(&self, mut d: Dtype, state: usize) -> Res<Dtype> {
        let Obj::Tuple(items) = self.obj(state) else {
            return Err(self.err(format!(
                "dtype state is {}, not a tuple",
                self.obj(state).a_kind()
            )));
        };
        let order = items
            .get(1)
            .and_then(|&id| self.text_of(id))
            .and_then(|t| match t {
                [c @ (b'<' | b'>' | b'|' | b'=')] => Some(*c),
                _ => None,
            })
            .ok_or_else(|| self.err("dtype state has no byte order ('<', '>', '|' or '=')"))?;
        if items
            .iter()
            .skip(2)
            .take(3)
            .any(|&id| !matches!(self.obj(id), Obj::None))
        {
            return Err(self.err("structured or sub-array dtypes are not supported"));
        }
        if d.itemsize > 1 {
            d.byteorder = order;
        }
        Ok(d)
    }

    /// `ndarray.__setstate__(([version,] shape, dtype, is_fortran, raw))`.
    fn array_state(&self, state: usize) -> Res<Obj> {
        let (shape_id, dtype_id, fortran_id, raw_id) = match self.obj(state) {
            Obj::Tuple(items) => match items.as_slice() {
                &[_version, s, d, f, r] => (s, d, f, r),
                &[s, d, f, r] => (s, d, f, r),
                other => {
                    return Err(
                        self.err(format!("array state has {} items, expected 5", other.len()))
                    );
                }
            },
            other => {
                return Err(self.err(format!("array state is {}, not a tuple", other.a_kind())));
            }
        };
        let Obj::Tuple(dims) = self.obj(shape_id) else {
            return Err(self.err(format!(
                "array shape is {}, not a tuple",
                self.obj(shape_id).a_kind()
            )));
        };
        if dims.len() > MAX_NDIM {
            return Err(self.err(format!("array has {} dimensions", dims.len())));
        }
        let mut shape = Vec::with_capacity(dims.len());
        for &dim in dims {
            match self.obj(dim) {
                Obj::Int(v) => match usize::try_from(*v) {
                    Ok(n) => shape.push(n),
                    Err(_) => return Err(self.err(format!("array dimension {v} is negative"))),
                },
                other => {
                    return Err(
                        self.err(format!("array dimension is {}, not an int", other.a_kind()))
                    );
                }
            }
        }
        let Obj::Dtype(mut dtype) = *self.obj(dtype_id) else {
            return Err(self.err(format!(
                "array dtype is {}, not a numpy dtype",
                self.obj(dtype_id).a_kind()
            )));
        };
        match dtype.byteorder {
            b'>' => {
                return Err(self.err(format!(
                    "big-endian dtype '{}' is not supported",
                    dtype.descr()
                )));
            }
            // Unset order means native, and numpy never pickles native as '=': assume
            // little-endian as every machine CIFAR was written on was.
            b'=' => dtype.byteorder = b'<',
            _ => {}
        }
        let fortran = match self.obj(fortran_id) {
            Obj::Bool(b) => *b,
            Obj::Int(v) => *v != 0,
            other => {
                return Err(self.err(format!(
                    "array order flag is {}, not a bool",
                    other.a_kind()
                )));
            }
        };
        if fortran {
            return Err(self.err("Fortran-order arrays are not supported"));
        }
        let raw_len = match self.obj(raw_id) {
            Obj::Bytes(b) => b.len(),
            Obj::List(_) => {
                return Err(self.err("array data is a list (object arrays are not supported)"));
            }
            other => {
                return Err(self.err(format!(
                    "array data is {}, not a byte string",
                    other.a_kind()
                )));
            }
        };
        let needed = shape
            .iter()
            .try_fold(dtype.itemsize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| self.err(format!("array shape {shape:?} overflows")))?;
        if needed != raw_len {
            return Err(self.err(format!(
                "array data has {raw_len} bytes but shape {shape:?} of '{}' needs {needed}",
                dtype.descr()
            )));
        }
        Ok(Obj::Array {
            shape,
            dtype,
            data: raw_id,
        })
    }
}

/// `text.encode('latin1')` for `text` given as UTF-8: Python 3's protocol-2 spelling of
/// `bytes`. Latin1 text in UTF-8 is ASCII bytes and two-byte sequences led by 0xC2 or
/// 0xC3; the loop decodes and validates that without branching on the data, since pixel
/// bytes are as good as random and mispredicted branches made a `chars()` loop take
/// seconds on CIFAR-100 `train`.
fn latin1_from_utf8(text: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; text.len()];
    let mut len = 0;
    let mut bad = false;
    let mut after_lead = false;
    let next_bytes = text.iter().skip(1).copied().chain(std::iter::once(0));
    for (&b, next) in text.iter().zip(next_bytes) {
        let lead = b & 0xFE == 0xC2;
        let continuation = b & 0xC0 == 0x80;
        // Other bytes >= 0xC0 start characters above U+00FF (or are not UTF-8), and a
        // continuation byte must follow a lead byte and nothing else.
        bad |= (b >= 0xC0 && !lead) | (continuation != after_lead);
        after_lead = lead;
        let decoded = if lead {
            ((b & 0x1F) << 6) | (next & 0x3F)
        } else {
            b
        };
        if let Some(slot) = out.get_mut(len) {
            *slot = decoded;
        }
        len += usize::from(!continuation);
    }
    if bad || after_lead {
        // Slow path, only to name the offending character.
        return Err(match std::str::from_utf8(text) {
            Err(_) => "unicode string is not valid UTF-8".to_owned(),
            Ok(s) => {
                let c = s
                    .chars()
                    .map(u32::from)
                    .find(|&c| c > 0xFF)
                    .unwrap_or(0xFFFD);
                format!("character U+{c:04X} cannot be encoded as latin1")
            }
        });
    }
    out.truncate(len);
    Ok(out)
}

/// A name from the input, safe to put in a message: lossy UTF-8, control characters
/// escaped, at most 100 characters.
fn printable(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text
        .chars()
        .take(100)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > 100 {
        out.push('…');
    }
    out
}

/// Pickles written by Python 3.11 (numpy 2.4.6), kept as bytes so tests need no Python.
#[cfg(test)]
pub(crate) mod test_vectors {
    /// `pickle.dumps({'data': np.arange(2*3072, dtype=np.uint8).reshape(2, 3072),
    /// 'labels': [1, 2]}, protocol=2)`: the bytes before the pixels, which Python 3
    /// writes as `_codecs.encode(<BINUNICODE of the latin1-decoded pixels>, 'latin1')`.
    pub(crate) const P2_PREFIX: &[u8] =
        b"\x80\x02}q\x00(X\x04\x00\x00\x00dataq\x01cnumpy._core.multiarray\x0a_reconstruct\x0aq\
      \x02cnumpy\x0andarray\x0aq\x03K\x00\x85q\x04c_codecs\x0aencode\x0aq\x05X\x01\x00\x00\x00\
      bq\x06X\x06\x00\x00\x00latin1q\x07\x86q\x08Rq\x09\x87q\x0aRq\x0b(K\x01K\x02M\x00\x0c\x86\
      q\x0ccnumpy\x0adtype\x0aq\x0dX\x02\x00\x00\x00u1q\x0e\x89\x88\x87q\x0fRq\x10(K\x03X\x01\
      \x00\x00\x00|q\x11NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x12b\x89h\x05X\x00$\x00\
      \x00";
    const P2_SUFFIX: &[u8] =
        b"q\x13h\x07\x86q\x14Rq\x15tq\x16bX\x06\x00\x00\x00labelsq\x17]q\x18(K\x01K\x02eu.";
    /// The same dict at `protocol=4` (FRAME, MEMOIZE, STACK_GLOBAL, BINBYTES).
    const P4_PREFIX: &[u8] =
        b"\x80\x04\x95\xab\x18\x00\x00\x00\x00\x00\x00}\x94(\x8c\x04data\x94\x8c\x16numpy._core.mu\
      ltiarray\x94\x8c\x0c_reconstruct\x94\x93\x94\x8c\x05numpy\x94\x8c\x07ndarray\x94\x93\x94\
      K\x00\x85\x94C\x01b\x94\x87\x94R\x94(K\x01K\x02M\x00\x0c\x86\x94h\x05\x8c\x05dtype\x94\
      \x93\x94\x8c\x02u1\x94\x89\x88\x87\x94R\x94(K\x03\x8c\x01|\x94NNNJ\xff\xff\xff\xffJ\xff\
      \xff\xff\xffK\x00t\x94b\x89B\x00\x18\x00\x00";
    const P4_SUFFIX: &[u8] = b"\x94t\x94b\x8c\x06labels\x94]\x94(K\x01K\x02eu.";

    /// `np.arange(6144, dtype=np.uint8)`: the pixels of both vectors.
    pub(crate) fn arange_pixels() -> Vec<u8> {
        (0..2 * 3072).map(|i| i as u8).collect()
    }

    /// The protocol 2 vector (9464 bytes, as Python reported).
    pub(crate) fn python3_protocol2() -> Vec<u8> {
        let mut text = Vec::new();
        for b in arange_pixels() {
            // latin1 → str → UTF-8, as Python 3 does.
            text.extend_from_slice(char::from(b).encode_utf8(&mut [0; 4]).as_bytes());
        }
        [P2_PREFIX, &text, P2_SUFFIX].concat()
    }

    /// The protocol 4 vector (6326 bytes, as Python reported).
    pub(crate) fn python3_protocol4() -> Vec<u8> {
        [P4_PREFIX, &arange_pixels(), P4_SUFFIX].concat()
    }

    /// `pickle.dumps({'data': np.arange(6, dtype=np.uint8).reshape(2, 3),
    /// 'labels': np.array([1, -2, 300], dtype='<i8'), 'names': ['a', 'bé'],
    /// 'big': 2**40}, protocol=2)`.
    pub(crate) const TINY_P2: &[u8] =
        b"\x80\x02}q\x00(X\x04\x00\x00\x00dataq\x01cnumpy._core.multiarray\x0a_reconstruct\x0aq\
      \x02cnumpy\x0andarray\x0aq\x03K\x00\x85q\x04c_codecs\x0aencode\x0aq\x05X\x01\x00\x00\x00\
      bq\x06X\x06\x00\x00\x00latin1q\x07\x86q\x08Rq\x09\x87q\x0aRq\x0b(K\x01K\x02K\x03\x86q\
      \x0ccnumpy\x0adtype\x0aq\x0dX\x02\x00\x00\x00u1q\x0e\x89\x88\x87q\x0fRq\x10(K\x03X\x01\
      \x00\x00\x00|q\x11NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x12b\x89h\x05X\x06\x00\
      \x00\x00\x00\x01\x02\x03\x04\x05q\x13h\x07\x86q\x14Rq\x15tq\x16bX\x06\x00\x00\x00labelsq\
      \x17h\x02h\x03K\x00\x85q\x18h\x09\x87q\x19Rq\x1a(K\x01K\x03\x85q\x1bh\x0dX\x02\x00\x00\
      \x00i8q\x1c\x89\x88\x87q\x1dRq\x1e(K\x03X\x01\x00\x00\x00<q\x1fNNNJ\xff\xff\xff\xffJ\xff\
      \xff\xff\xffK\x00tq\x20b\x89h\x05X\x20\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\xc3\
      \xbe\xc3\xbf\xc3\xbf\xc3\xbf\xc3\xbf\xc3\xbf\xc3\xbf\xc3\xbf,\x01\x00\x00\x00\x00\x00\
      \x00q!h\x07\x86q\"Rq#tq$bX\x05\x00\x00\x00namesq%]q&(X\x01\x00\x00\x00aq'X\x03\x00\x00\
      \x00b\xc3\xa9q(eX\x03\x00\x00\x00bigq)\x8a\x06\x00\x00\x00\x00\x00\x01u.";
    /// The same at protocol 3 (BINBYTES instead of `_codecs.encode`).
    pub(crate) const TINY_P3: &[u8] =
        b"\x80\x03}q\x00(X\x04\x00\x00\x00dataq\x01cnumpy._core.multiarray\x0a_reconstruct\x0aq\
      \x02cnumpy\x0andarray\x0aq\x03K\x00\x85q\x04C\x01bq\x05\x87q\x06Rq\x07(K\x01K\x02K\x03\
      \x86q\x08cnumpy\x0adtype\x0aq\x09X\x02\x00\x00\x00u1q\x0a\x89\x88\x87q\x0bRq\x0c(K\x03X\
      \x01\x00\x00\x00|q\x0dNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x0eb\x89C\x06\x00\x01\
      \x02\x03\x04\x05q\x0ftq\x10bX\x06\x00\x00\x00labelsq\x11h\x02h\x03K\x00\x85q\x12h\x05\
      \x87q\x13Rq\x14(K\x01K\x03\x85q\x15h\x09X\x02\x00\x00\x00i8q\x16\x89\x88\x87q\x17Rq\x18(\
      K\x03X\x01\x00\x00\x00<q\x19NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x1ab\x89C\x18\
      \x01\x00\x00\x00\x00\x00\x00\x00\xfe\xff\xff\xff\xff\xff\xff\xff,\x01\x00\x00\x00\x00\
      \x00\x00q\x1btq\x1cbX\x05\x00\x00\x00namesq\x1d]q\x1e(X\x01\x00\x00\x00aq\x1fX\x03\x00\
      \x00\x00b\xc3\xa9q\x20eX\x03\x00\x00\x00bigq!\x8a\x06\x00\x00\x00\x00\x00\x01u.";
    /// The same at protocol 4.
    pub(crate) const TINY_P4: &[u8] =
        b"\x80\x04\x95#\x01\x00\x00\x00\x00\x00\x00}\x94(\x8c\x04data\x94\x8c\x16numpy._core.multi\
      array\x94\x8c\x0c_reconstruct\x94\x93\x94\x8c\x05numpy\x94\x8c\x07ndarray\x94\x93\x94K\
      \x00\x85\x94C\x01b\x94\x87\x94R\x94(K\x01K\x02K\x03\x86\x94h\x05\x8c\x05dtype\x94\x93\
      \x94\x8c\x02u1\x94\x89\x88\x87\x94R\x94(K\x03\x8c\x01|\x94NNNJ\xff\xff\xff\xffJ\xff\xff\
      \xff\xffK\x00t\x94b\x89C\x06\x00\x01\x02\x03\x04\x05\x94t\x94b\x8c\x06labels\x94h\x04h\
      \x07K\x00\x85\x94h\x09\x87\x94R\x94(K\x01K\x03\x85\x94h\x0e\x8c\x02i8\x94\x89\x88\x87\
      \x94R\x94(K\x03\x8c\x01<\x94NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t\x94b\x89C\x18\
      \x01\x00\x00\x00\x00\x00\x00\x00\xfe\xff\xff\xff\xff\xff\xff\xff,\x01\x00\x00\x00\x00\
      \x00\x00\x94t\x94b\x8c\x05names\x94]\x94(\x8c\x01a\x94\x8c\x03b\xc3\xa9\x94e\x8c\x03big\
      \x94\x8a\x06\x00\x00\x00\x00\x00\x01u.";
}

#[cfg(test)]
mod tests {
    use super::test_vectors::*;
    use super::*;
    use crate::data::fixtures::pickle::{self as fx, PickleWriter};

    fn reject(bytes: &[u8]) -> PickleError {
        match parse(bytes) {
            Ok(p) => panic!("accepted: {p:?}"),
            Err(e) => e,
        }
    }

    /// A one-key dict `{'data': array}` with every part of the array's state chosen by
    /// the caller (to break one at a time).
    fn array_pickle(
        descr: &str,
        order: &str,
        shape: &[usize],
        fortran: bool,
        raw: &[u8],
    ) -> Vec<u8> {
        let mut w = PickleWriter::new();
        w.proto(2).empty_dict().put().str_item(b"data");
        w.global("numpy.core.multiarray", "_reconstruct")
            .global("numpy", "ndarray")
            .int(0)
            .tuple1()
            .string(b"b")
            .tuple3()
            .reduce();
        w.mark().int(1).int_tuple(shape);
        w.global("numpy", "dtype")
            .string(descr.as_bytes())
            .int(0)
            .int(1)
            .tuple3()
            .reduce();
        w.mark()
            .int(3)
            .string(order.as_bytes())
            .none()
            .none()
            .none()
            .int(-1)
            .int(-1)
            .int(0)
            .tuple()
            .build();
        w.bool(fortran).string(raw).tuple().build().setitem().stop();
        w.into_bytes()
    }

    #[test]
    fn reads_python3_protocol2_and_4_vectors() {
        for (bytes, total) in [(python3_protocol2(), 9464), (python3_protocol4(), 6326)] {
            assert_eq!(bytes.len(), total, "python reported {total} bytes");
            let p = parse(&bytes).expect("test value");
            assert!(p.is_dict());
            let data = p
                .get("data")
                .expect("test value")
                .as_array()
                .expect("test value");
            assert_eq!(data.shape, &[2, 3072]);
            assert_eq!(data.dtype.descr(), "|u1");
            assert_eq!(data.data, arange_pixels().as_slice());
            assert_eq!(
                p.get("labels")
                    .expect("test value")
                    .as_int_list()
                    .expect("test value"),
                vec![1, 2]
            );
            assert!(p.get("nope").is_none());
        }
    }

    #[test]
    fn reads_tiny_python3_vectors_at_protocols_2_3_4() {
        for bytes in [TINY_P2, TINY_P3, TINY_P4] {
            let p = parse(bytes).expect("test value");
            let data = p
                .get("data")
                .expect("test value")
                .as_array()
                .expect("test value");
            assert_eq!(
                (data.shape, data.data),
                (&[2usize, 3][..], &[0u8, 1, 2, 3, 4, 5][..])
            );
            let labels = p.get("labels").expect("test value");
            assert_eq!(labels.as_array().expect("test value").dtype.descr(), "<i8");
            assert_eq!(labels.as_int_list().expect("test value"), vec![1, -2, 300]);
            let names = p
                .get("names")
                .expect("test value")
                .as_str_list()
                .expect("test value");
            assert_eq!(names, vec!["a".to_owned(), "bé".to_owned()]);
            assert_eq!(p.get("big").expect("test value").as_int(), Some(1 << 40));
            let keys: Vec<_> = p.root().keys().iter().filter_map(Value::as_text).collect();
            assert_eq!(keys, vec!["data", "labels", "names", "big"]);
        }
    }

    #[test]
    fn reads_fixture_writers_with_byte_string_keys() {
        let pixels: Vec<u8> = (0..3 * 3072).map(|i| (i % 251) as u8).collect();
        let bytes = fx::cifar10_batch(&pixels, &[1, 2, 3]);
        let p = parse(&bytes).expect("test value");
        assert_eq!(
            p.get("data")
                .expect("test value")
                .as_array()
                .expect("test value")
                .data,
            pixels.as_slice()
        );
        assert_eq!(
            p.get("labels")
                .expect("test value")
                .as_int_list()
                .expect("test value"),
            vec![1, 2, 3]
        );
        assert_eq!(
            p.get("batch_label").expect("test value").as_bytes(),
            Some(&b"fixture batch 1 of 1"[..])
        );
        let files = p
            .get("filenames")
            .expect("test value")
            .as_str_list()
            .expect("test value");
        assert_eq!(files[2], "fixture_00002.png");
        let meta = fx::cifar10_meta(&["cat", "dog"]);
        let p = parse(&meta).expect("test value");
        assert_eq!(p.get("num_vis").expect("test value").as_int(), Some(3072));
        assert_eq!(
            p.get("label_names")
                .expect("test value")
                .as_str_list()
                .expect("test value"),
            vec!["cat", "dog"]
        );
    }

    #[test]
    fn rejects_forbidden_globals() {
        // os.system via GLOBAL (Python 2 style)…
        let mut w = PickleWriter::new();
        w.proto(2)
            .global("os", "system")
            .string(b"echo pwned")
            .tuple1()
            .reduce()
            .stop();
        let e = reject(w.as_bytes());
        assert_eq!(e.offset, 2);
        assert_eq!(
            e.reason,
            "global 'os.system' is not allowed (only numpy array reconstruction)"
        );
        // …posix.system, and builtins.eval via STACK_GLOBAL (Python 3 style).
        let mut w = PickleWriter::new();
        w.proto(2).global("posix", "system");
        assert!(
            reject(w.as_bytes())
                .reason
                .contains("'posix.system' is not allowed")
        );
        let mut w = PickleWriter::new();
        w.proto(4)
            .short_binunicode("builtins")
            .short_binunicode("eval")
            .stack_global();
        let e = reject(w.as_bytes());
        assert!(e.reason.contains("'builtins.eval' is not allowed"), "{e}");
        assert_eq!(e.offset, 2 + 10 + 6);
        // Near misses of the allowed names are refused too.
        let mut w = PickleWriter::new();
        w.proto(2).global("numpy", "load");
        assert!(reject(w.as_bytes()).reason.contains("'numpy.load'"));
    }

    #[test]
    fn rejects_unknown_opcodes_and_text_protocols() {
        let mut w = PickleWriter::new();
        w.proto(2).raw(b"I42\n").stop(); // INT: a text opcode
        let e = reject(w.as_bytes());
        assert_eq!(
            (e.offset, e.reason.as_str()),
            (2, "unsupported opcode 0x49 ('I')")
        );
        assert!(
            reject(b"\x80\x02\xff.")
                .reason
                .starts_with("unsupported opcode 0xff")
        );
        // Protocol 0 (text) and 1 start without PROTO; PROTO 0/1/5 are refused.
        assert!(
            reject(b"(dp0\n.")
                .reason
                .contains("protocol 0/1 pickles are not supported")
        );
        assert!(
            reject(b"}q\x00.")
                .reason
                .contains("protocol 0/1 pickles are not supported")
        );
        assert!(
            reject(b"\x80\x01}.")
                .reason
                .contains("protocol 0/1 pickles are not supported")
        );
        assert!(
            reject(b"\x80\x05}.")
                .reason
                .contains("protocol 5 is not supported")
        );
    }

    #[test]
    fn rejects_truncation_at_every_cut() {
        let bytes = python3_protocol2();
        for cut in 0..bytes.len() {
            let e = reject(&bytes[..cut]);
            assert!(e.offset <= cut, "offset {} past the cut {cut}", e.offset);
        }
        // Cut right before STOP, inside a length-prefixed payload, inside an argument.
        let n = bytes.len();
        assert_eq!(reject(&bytes[..n - 1]).reason, "truncated: no STOP opcode");
        assert_eq!(reject(&bytes[..n - 1]).offset, n - 1);
        let at = P2_PREFIX.len();
        assert_eq!(
            reject(&bytes[..at + 100]).reason,
            "length 9216 exceeds the remaining 100 bytes"
        );
        assert_eq!(
            reject(&bytes[..at - 2]).reason,
            "truncated: BINUNICODE needs 4 argument bytes, only 2 remain"
        );
        assert_eq!(reject(b"").reason, "truncated: no STOP opcode");
    }

    #[test]
    fn rejects_lengths_beyond_the_input_before_allocating() {
        let e = reject(b"\x80\x02T\xff\xff\xff\x7f.");
        assert_eq!(
            (e.offset, e.reason.as_str()),
            (2, "length 2147483647 exceeds the remaining 1 bytes")
        );
        assert!(
            reject(b"\x80\x02T\xff\xff\xff\xff.")
                .reason
                .contains("negative length -1")
        );
        let e = reject(b"\x80\x04X\xff\xff\xff\xffabc.");
        assert_eq!(e.reason, "length 4294967295 exceeds the remaining 4 bytes");
        let e = reject(b"\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\xff}.");
        assert_eq!(
            e.reason,
            "length 18446744073709551615 exceeds the remaining 2 bytes"
        );
        assert!(
            reject(b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.")
                .reason
                .contains("wider than 64 bits")
        );
    }

    #[test]
    fn validates_array_state() {
        let good = array_pickle("u1", "|", &[2, 3], false, &[1, 2, 3, 4, 5, 6]);
        assert_eq!(
            parse(&good)
                .expect("test value")
                .get("data")
                .expect("test value")
                .as_array()
                .expect("test value")
                .data,
            &[1, 2, 3, 4, 5, 6]
        );
        let i2 = array_pickle("i2", "<", &[2], false, &[0xff, 0xff, 2, 1]);
        assert_eq!(
            parse(&i2)
                .expect("test value")
                .get("data")
                .expect("test value")
                .as_int_list()
                .expect("test value"),
            vec![-1, 0x102]
        );

        let short = array_pickle("u1", "|", &[2, 3], false, &[1, 2, 3, 4, 5]);
        let e = reject(&short);
        assert_eq!(
            e.reason,
            "array data has 5 bytes but shape [2, 3] of '|u1' needs 6"
        );
        assert_eq!(e.offset, short.len() - 3, "reported at the BUILD");
        let wide = array_pickle("i8", "<", &[2], false, &[0; 8]);
        assert!(
            reject(&wide)
                .reason
                .contains("has 8 bytes but shape [2] of '<i8' needs 16")
        );
        let huge = array_pickle("u8", "<", &[1 << 62, 1 << 62], false, &[]);
        assert!(reject(&huge).reason.contains("overflows"));
        let fortran = array_pickle("u1", "|", &[2, 3], true, &[0; 6]);
        assert_eq!(
            reject(&fortran).reason,
            "Fortran-order arrays are not supported"
        );
        let big_endian = array_pickle("i4", ">", &[1], false, &[0; 4]);
        assert!(
            reject(&big_endian)
                .reason
                .contains("big-endian dtype '>i4'")
        );
        let object = array_pickle("O8", "|", &[1], false, &[0; 8]);
        assert!(
            reject(&object)
                .reason
                .contains("dtype 'O8' is not supported")
        );
    }

    #[test]
    fn rejects_misused_callables() {
        // REDUCE on a non-global, numpy.ndarray called directly, a bad codec.
        let mut w = PickleWriter::new();
        w.proto(2).none().empty_tuple().reduce().stop();
        assert!(reject(w.as_bytes()).reason.contains("REDUCE on None"));
        let mut w = PickleWriter::new();
        w.proto(2)
            .global("numpy", "ndarray")
            .empty_tuple()
            .reduce()
            .stop();
        assert!(
            reject(w.as_bytes())
                .reason
                .contains("cannot be called directly")
        );
        let mut w = PickleWriter::new();
        w.proto(2)
            .global("_codecs", "encode")
            .binunicode("x")
            .binunicode("rot13")
            .tuple2()
            .reduce()
            .stop();
        assert!(reject(w.as_bytes()).reason.contains("only latin1"));
        let mut w = PickleWriter::new();
        w.proto(2)
            .global("_codecs", "encode")
            .binunicode("€")
            .binunicode("latin-1")
            .tuple2()
            .reduce()
            .stop();
        assert!(reject(w.as_bytes()).reason.contains("U+20AC"));
        let mut w = PickleWriter::new();
        w.proto(2)
            .global("_codecs", "encode")
            .binunicode("\u{ff}A")
            .binunicode("latin1")
            .tuple2()
            .reduce()
            .stop();
        assert_eq!(
            parse(w.as_bytes()).expect("test value").root().as_bytes(),
            Some(&[0xff, b'A'][..])
        );
        // BUILD on a list, _reconstruct of something else.
        let mut w = PickleWriter::new();
        w.proto(2).empty_list().empty_dict().build().stop();
        assert!(reject(w.as_bytes()).reason.contains("BUILD on a list"));
        let mut w = PickleWriter::new();
        w.proto(2)
            .global("numpy.core.multiarray", "_reconstruct")
            .global("numpy", "dtype");
        w.int(0).tuple1().string(b"b").tuple3().reduce().stop();
        assert!(
            reject(w.as_bytes())
                .reason
                .contains("anything but numpy.ndarray")
        );
    }

    #[test]
    fn latin1_decoder_checks_its_input() {
        let all: Vec<u8> = (0..=255).collect();
        let utf8: String = all.iter().map(|&b| char::from(b)).collect();
        assert_eq!(latin1_from_utf8(utf8.as_bytes()), Ok(all));
        assert_eq!(latin1_from_utf8(b""), Ok(vec![]));
        assert_eq!(
            latin1_from_utf8(b"A\xc3\xbf\xc2\x80z"),
            Ok(vec![b'A', 0xff, 0x80, b'z'])
        );
        for bad in [
            &b"\x80"[..],
            b"\xc3",
            b"\xc3A",
            b"A\xc3\xbf\xbf",
            b"\xc0\x80",
            b"\xff",
        ] {
            let e = latin1_from_utf8(bad).expect_err("invalid UTF-8");
            assert_eq!(e, "unicode string is not valid UTF-8", "{bad:?}");
        }
        let e = latin1_from_utf8("ab€".as_bytes()).expect_err("not latin1");
        assert_eq!(e, "character U+20AC cannot be encoded as latin1");
        // A long string is only checked by the consumer: still refused when encoded.
        let mut long = vec![b'a'; 70_000];
        long.push(0x80);
        let mut w = PickleWriter::new();
        w.proto(2)
            .global("_codecs", "encode")
            .raw(b"X")
            .raw(&(long.len() as u32).to_le_bytes());
        w.raw(&long).binunicode("latin1").tuple2().reduce().stop();
        assert!(reject(w.as_bytes()).reason.contains("not valid UTF-8"));
    }

    #[test]
    fn rejects_malformed_stack_use() {
        assert_eq!(reject(b"\x80\x02.").reason, "stack underflow");
        assert_eq!(reject(b"\x80\x02Na.").reason, "stack underflow");
        assert!(reject(b"\x80\x02NNa.").reason.contains("APPEND to None"));
        assert!(reject(b"\x80\x02e.").reason.contains("no MARK"));
        assert!(reject(b"\x80\x02}(Nu.").reason.contains("odd number"));
        assert!(reject(b"\x80\x02h\x07.").reason.contains("memo key 7"));
        assert!(reject(b"\x80\x02(\x85.").reason.contains("stack underflow"));
        assert!(
            reject(b"\x80\x02X\x02\x00\x00\x00\xc3(.")
                .reason
                .contains("UTF-8")
        );
    }

    #[test]
    fn deep_nesting_and_cycles_need_no_recursion() {
        // 1 000 000 nested lists: building, inspecting and dropping must not recurse.
        let depth = 1_000_000;
        let mut bytes = b"\x80\x02".to_vec();
        bytes.extend(std::iter::repeat_n(b']', depth));
        bytes.extend(std::iter::repeat_n(b'a', depth - 1));
        bytes.push(b'.');
        let p = parse(&bytes).expect("test value");
        assert_eq!(p.root().items().expect("test value").len(), 1);
        let _ = format!("{p:?}");
        drop(p);
        // A list holding itself and a dict holding itself (through the memo).
        let p =
            parse(b"\x80\x02]q\x00h\x00a}q\x01U\x01kh\x01sh\x00h\x01\x86.").expect("test value");
        let pair = p.root().items().expect("test value");
        let list = pair[0];
        assert_eq!(list.items().expect("test value")[0].kind(), "list");
        assert!(
            list.as_int_list()
                .expect_err("should fail")
                .contains("item 0 is a list")
        );
        let dict = pair[1];
        assert_eq!(
            dict.get("k")
                .expect("test value")
                .get("k")
                .expect("test value")
                .kind(),
            "dict"
        );
        let _ = format!("{p:?} {list:?} {dict:?}");
    }

    #[test]
    fn caps_object_count() {
        let mut bytes = b"\x80\x02".to_vec();
        bytes.extend(std::iter::repeat_n(b'N', MAX_OBJECTS + 1));
        bytes.push(b'.');
        let e = reject(&bytes);
        assert!(e.reason.contains("objects"), "{e}");
        assert_eq!(e.offset, 2 + MAX_OBJECTS);
    }

    /// Deterministic LCG (Knuth's MMIX constants): no external crates.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }
    }

    #[test]
    fn never_panics_on_prefixes_and_mutations() {
        let pixels: Vec<u8> = (0..2 * 3072).map(|i| (i % 13) as u8).collect();
        let seeds = [
            fx::cifar10_batch(&pixels, &[1, 2]),
            fx::cifar10_batch(&[], &[]),
            fx::cifar100_batch(&[], &[], &[]),
            fx::cifar100_meta(&["a", "bb"], &["cc"]),
            TINY_P2.to_vec(),
            TINY_P4.to_vec(),
        ];
        for seed in &seeds {
            for cut in 0..=seed.len() {
                let _ = parse(&seed[..cut]);
            }
        }
        let mut rng = Lcg(0x5eed);
        for i in 0..6000 {
            let seed = &seeds[i % seeds.len()];
            let mut bytes = seed.clone();
            // Mostly hit the structure, not the 6 KiB of pixels of the first seed.
            let structure = [
                0..bytes.len().min(300),
                bytes.len().saturating_sub(120)..bytes.len(),
            ];
            let range = &structure[i / seeds.len() % 2];
            let at = range.start + (rng.next() as usize) % range.len();
            bytes[at] = rng.next() as u8;
            if i % 3 == 0 {
                // A second mutation now and then, to break lengths and structure together.
                let at = (rng.next() as usize) % bytes.len();
                bytes[at] = rng.next() as u8;
            }
            if let Ok(p) = parse(&bytes) {
                // Whatever parsed must be safe to inspect.
                let root = p.root();
                let _ = (
                    root.keys(),
                    root.as_int_list(),
                    root.as_str_list(),
                    format!("{p:?}"),
                );
                if let Some(a) = p.get("data").and_then(|v| v.as_array()) {
                    let n: usize = a.shape.iter().product::<usize>() * a.dtype.itemsize;
                    assert_eq!(a.data.len(), n);
                }
            }
        }
    }
}
