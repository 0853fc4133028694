//! The pickle virtual machine: interprets the opcodes CIFAR's pickles use into the arena
//! of objects the value API reads (see the parent module for what it refuses and why).

use std::collections::HashMap;

use super::latin1::{latin1_from_utf8, printable};
use super::*;

/// The unpickler's state while interpreting.
pub(super) struct Machine<'a> {
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
    pub(super) fn new(input: &'a [u8]) -> Self {
        Machine {
            input,
            pos: 0,
            op_at: 0,
            objs: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            cells: 0,
        }
    }

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

    pub(super) fn run(mut self) -> Res<Pickle<'a>> {
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
