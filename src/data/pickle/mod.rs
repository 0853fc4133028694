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
//!
//! Files: this one holds the value API (what a parsed pickle is: [`Pickle`], [`Value`],
//! [`NdArray`], [`Dtype`]) and the limits; `machine.rs` the virtual machine that builds it,
//! `latin1.rs` the text helpers, `tests.rs` and `test_vectors.rs` the tests.

use std::fmt;
use std::ops::Range;

mod latin1;
mod machine;
#[cfg(test)]
pub(crate) mod test_vectors;
#[cfg(test)]
mod tests;

use machine::Machine;

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
    Machine::new(bytes).run()
}
