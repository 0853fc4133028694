use super::latin1::latin1_from_utf8;
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
fn array_pickle(descr: &str, order: &str, shape: &[usize], fortran: bool, raw: &[u8]) -> Vec<u8> {
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
    let p = parse(b"\x80\x02]q\x00h\x00a}q\x01U\x01kh\x01sh\x00h\x01\x86.").expect("test value");
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
