//! annt's own reverse pass over the nodes [`custom`](super::custom)'s `attach*` made.
//!
//! Candle's `Tensor::backward` gives every gradient edge a fresh zero tensor and adds the
//! edge's gradient into it (`GradStore::or_insert` + `add`), even where a value has one
//! consumer, which is every activation of a plain network but the residual inputs. For
//! ResNet-18 at batch 32 that is a zero-fill, a read of two and a write of one
//! activation-sized buffer per edge, 8 MiB each in the first stage: in a bf16 step
//! (`perf record --call-graph dwarf` of `annt speed --model resnet18-cifar --modes
//! amp-bf16`) Candle's backward outside annt's own kernels was 4.4 % of the samples.
//!
//! While a [`Recording`] is live, every attached node also goes on a tape on this thread
//! (its output's id, its inputs and its backward closure, shared with the Candle node).
//! [`Recording::finish`] keeps the tape only when it covers the whole network: every input
//! that records a gradient is a parameter (`Var`) or an earlier node's output, and the
//! root is a node's output. Running the tape backwards then calls the same closures in a
//! valid order (each node was made after its inputs) and keeps the first gradient of a
//! value as it is; a second one (a residual input) is added to it. Where a network uses an
//! op outside the tape (Candle's own ops on a tracked value), `finish` gives `None` and the
//! caller keeps Candle's backward, which the nodes also carry: the result is the same
//! either way, only its cost differs.
//!
//! [`Head`] is what the trainer uses: the loss is computed from a leaf copy of the logits,
//! Candle's backward walks the loss's few ops down to that leaf, and the tape takes the
//! logits' gradient from there through the network.

use std::cell::RefCell;
use std::collections::hash_map::Entry as Slot;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, TensorId, Var};

/// A one-input node's backward: `(input, output_grad) → input_grad`.
pub(super) type Back1 = Arc<dyn Fn(&Tensor, &Tensor) -> Result<Tensor> + Send + Sync>;
/// A two-input node's backward.
pub(super) type Back2 =
    Arc<dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<(Tensor, Tensor)> + Send + Sync>;
/// A three-input node's backward.
pub(super) type Back3 = Arc<
    dyn Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Result<(Tensor, Tensor, Tensor)> + Send + Sync,
>;

/// A node's backward, by its number of inputs.
pub(super) enum Back {
    One(Back1),
    Two(Back2),
    Three(Back3),
}

/// One input of a taped node.
struct Input {
    id: TensorId,
    /// The input without its graph (what Candle hands a custom op's backward too).
    value: Tensor,
    /// Whether it records a gradient (`Tensor::track_op` when the node was made).
    tracked: bool,
    /// Whether it is a parameter: its gradient goes to the result, not on down the tape.
    var: bool,
}

/// One attached node.
struct Node {
    out: TensorId,
    inputs: Vec<Input>,
    back: Back,
}

/// The tape of this thread's live [`Recording`]: its generation and its nodes.
struct Live {
    generation: u64,
    nodes: Vec<Node>,
}

thread_local! {
    static TAPE: RefCell<Option<Live>> = const { RefCell::new(None) };
    static GENERATION: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Puts a node on the tape when a recording is live on this thread (nothing otherwise).
pub(super) fn note(out: &Tensor, inputs: &[&Tensor], back: impl FnOnce() -> Back) {
    TAPE.with(|t| {
        if let Some(live) = t.borrow_mut().as_mut() {
            let inputs = inputs
                .iter()
                .map(|x| Input {
                    id: x.id(),
                    value: x.detach(),
                    tracked: x.track_op(),
                    var: x.is_variable(),
                })
                .collect();
            live.nodes.push(Node {
                out: out.id(),
                inputs,
                back: back(),
            });
        }
    });
}

/// `x.reshape(shape)`, put on the tape too (its backward reshapes the gradient back); the
/// tensor itself when the shape is already `shape` (Candle would add a node even then).
pub fn reshape<S: Into<candle_core::Shape>>(x: &Tensor, shape: S) -> Result<Tensor> {
    let shape = shape.into();
    if x.shape() == &shape {
        return Ok(x.clone());
    }
    let y = x.reshape(shape)?;
    let dims = x.dims().to_vec();
    note(&y, &[x], || {
        Back::One(Arc::new(move |_x, g| g.reshape(dims.as_slice())))
    });
    Ok(y)
}

/// `x · m`, `m` broadcast over `x` (a gate, a dropout or stochastic-depth mask; `x` has
/// the product's shape), put on the tape too. `m`'s gradient (the product's sum over the broadcast axes) is computed only
/// when `m` records one; otherwise its slot gets the output gradient, which the tape drops
/// with every untracked input's.
pub fn broadcast_mul(x: &Tensor, m: &Tensor) -> Result<Tensor> {
    let y = x.broadcast_mul(m)?;
    if y.shape() != x.shape() {
        candle_core::bail!(
            "tape::broadcast_mul: x {:?} must have the product's shape {:?}",
            x.shape(),
            y.shape()
        );
    }
    let want_m = m.track_op();
    let axes: Vec<usize> = (0..m.rank())
        .filter(|&i| m.dims()[i] == 1 && x.dims()[i] != 1)
        .collect();
    note(&y, &[x, m], || {
        Back::Two(Arc::new(move |x, m, g| {
            let gx = g.broadcast_mul(m)?;
            let gm = if !want_m {
                g.clone()
            } else if axes.is_empty() {
                (g * x)?
            } else {
                (g * x)?.sum_keepdim(axes.as_slice())?
            };
            Ok((gx, gm))
        }))
    });
    Ok(y)
}

/// `a + b` (same shapes), put on the tape too: both inputs get the output's gradient.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let y = (a + b)?;
    note(&y, &[a, b], || {
        Back::Two(Arc::new(|_a, _b, g| Ok((g.clone(), g.clone()))))
    });
    Ok(y)
}

/// The logistic function, put on the tape too (its backward is `g·y·(1 − y)`).
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    let y = candle_nn::ops::sigmoid(x)?;
    let out = y.detach();
    note(&y, &[x], || {
        Back::One(Arc::new(move |_x, g| g * (&out * (1.0 - &out)?)?))
    });
    Ok(y)
}

/// `x.narrow(dim, start, len)`, put on the tape too (its backward places the gradient
/// between zeros).
pub fn narrow(x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
    let y = x.narrow(dim, start, len)?;
    let dims = x.dims().to_vec();
    note(&y, &[x], || {
        Back::One(Arc::new(move |_x, g| {
            let zeros = |n: usize| {
                let mut d = dims.clone();
                d[dim] = n;
                Tensor::zeros(d, g.dtype(), g.device())
            };
            let after = dims[dim] - start - len;
            let mut parts = Vec::with_capacity(3);
            if start > 0 {
                parts.push(zeros(start)?);
            }
            parts.push(g.clone());
            if after > 0 {
                parts.push(zeros(after)?);
            }
            Tensor::cat(&parts, dim)
        }))
    });
    Ok(y)
}

/// Records the attached nodes made on this thread until [`Recording::finish`] or drop. A
/// second recording started while one is live replaces it (the first one's `finish` then
/// gives `None`).
pub fn record() -> Recording {
    let generation = GENERATION.with(|g| {
        g.set(g.get() + 1);
        g.get()
    });
    TAPE.with(|t| {
        *t.borrow_mut() = Some(Live {
            generation,
            nodes: Vec::new(),
        })
    });
    Recording {
        generation,
        _thread_bound: std::marker::PhantomData,
    }
}

/// A live recording (see [`record`]). Bound to its thread: the tape is thread-local.
pub struct Recording {
    generation: u64,
    _thread_bound: std::marker::PhantomData<*const ()>,
}

impl Recording {
    /// Stops recording. The tape, when it covers everything `root` was computed from (see
    /// the module's doc); `None` when some tracked value came from an op outside it.
    pub fn finish(self, root: &Tensor) -> Option<Tape> {
        let live = TAPE.with(|t| {
            let mut t = t.borrow_mut();
            match t.as_ref() {
                Some(l) if l.generation == self.generation => t.take(),
                _ => None,
            }
        })?;
        let mut made = HashSet::with_capacity(live.nodes.len());
        for node in &live.nodes {
            let outside = node
                .inputs
                .iter()
                .any(|i| i.tracked && !i.var && !made.contains(&i.id));
            if outside {
                return None;
            }
            made.insert(node.out);
        }
        made.contains(&root.id())
            .then_some(Tape { nodes: live.nodes })
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        TAPE.with(|t| {
            let mut t = t.borrow_mut();
            if t.as_ref().is_some_and(|l| l.generation == self.generation) {
                t.take();
            }
        });
    }
}

/// The attached nodes of one forward pass, in the order they were made.
pub struct Tape {
    nodes: Vec<Node>,
}

impl Tape {
    /// The parameters' gradients, given `root`'s: each node's backward in reverse order of
    /// making, a node skipped when no gradient reached its output. Each node (its closure
    /// and what it holds) is dropped as soon as it has run.
    pub fn backward(self, root: &Tensor, root_grad: Tensor) -> Result<GradStore> {
        let mut pending: HashMap<TensorId, Tensor> = HashMap::new();
        pending.insert(root.id(), root_grad);
        let mut params: HashMap<TensorId, Tensor> = HashMap::new();
        for node in self.nodes.into_iter().rev() {
            let Some(grad) = pending.remove(&node.out) else {
                continue;
            };
            let x = |i: usize| &node.inputs[i].value;
            let grads = match &node.back {
                Back::One(f) => vec![f(x(0), &grad)?],
                Back::Two(f) => {
                    let (a, b) = f(x(0), x(1), &grad)?;
                    vec![a, b]
                }
                Back::Three(f) => {
                    let (a, b, c) = f(x(0), x(1), x(2), &grad)?;
                    vec![a, b, c]
                }
            };
            for (input, g) in node.inputs.iter().zip(grads) {
                if !input.tracked {
                    continue;
                }
                let (sums, g) = if input.var {
                    (&mut params, own_buffer(g)?)
                } else {
                    (&mut pending, g)
                };
                match sums.entry(input.id) {
                    Slot::Vacant(s) => {
                        s.insert(g);
                    }
                    Slot::Occupied(mut s) => {
                        let sum = s.get().add(&g)?;
                        *s.get_mut() = sum;
                    }
                }
            }
        }
        let mut store = GradStore::default();
        for (id, g) in params {
            store.insert_id(id, g);
        }
        Ok(store)
    }
}

/// `g` in a buffer of its own when it is a small view of a larger one. A layer's backward
/// may return its input's and its weight's gradients as two views of one buffer (the
/// convolution's `conv_backward_joined`): Candle's backward copied each into a fresh sum,
/// while the tape keeps a first gradient as it is, and a parameter's lives until the
/// optimiser step, so its view would keep the input gradient's memory alive with it
/// (ResNet-18 at batch 32: 124 MiB of buffers held for 42 MiB of gradients, 66 MiB more
/// peak than Candle's backward). Copied only when the buffer is more than twice the
/// view: a large weight's gradient keeps its buffer, whose rest is then small.
fn own_buffer(g: Tensor) -> Result<Tensor> {
    let pinned = {
        let (storage, _) = g.storage_and_layout();
        let len = match &*storage {
            candle_core::Storage::Cpu(c) => match c {
                candle_core::CpuStorage::F32(v) => v.len(),
                candle_core::CpuStorage::F64(v) => v.len(),
                candle_core::CpuStorage::BF16(v) => v.len(),
                candle_core::CpuStorage::F16(v) => v.len(),
                _ => 0,
            },
            // A device buffer's length is not public; a view that does not start at its
            // beginning is taken as part of a larger one.
            _ => {
                if g.layout().start_offset() > 0 {
                    usize::MAX
                } else {
                    0
                }
            }
        };
        len > 2 * g.elem_count()
    };
    // `force_contiguous` copies the view's elements alone (`copy` clones the whole buffer).
    if pinned { g.force_contiguous() } else { Ok(g) }
}

/// A network's logits with the loss's start cut from them when the tape covers the network
/// (see the module's doc).
pub struct Head {
    /// What the loss is computed from: a leaf copy of the logits, or the logits themselves
    /// when there is no tape.
    logits: Tensor,
    /// The tape and the logits it ends in.
    taped: Option<(Tape, Tensor)>,
}

impl Head {
    /// Ends `recording` at `logits`.
    pub fn new(logits: &Tensor, recording: Recording) -> Result<Self> {
        Ok(match recording.finish(logits) {
            Some(tape) => Self {
                logits: Var::from_tensor(&logits.detach())?.as_tensor().clone(),
                taped: Some((tape, logits.clone())),
            },
            None => Self {
                logits: logits.clone(),
                taped: None,
            },
        })
    }

    /// The logits to compute the loss from.
    pub fn logits(&self) -> &Tensor {
        &self.logits
    }

    /// Whether the tape runs the network's backward (rather than Candle's).
    pub fn taped(&self) -> bool {
        self.taped.is_some()
    }

    /// The parameters' gradients of `objective`, computed from [`Head::logits`].
    pub fn backward(self, objective: &Tensor) -> Result<GradStore> {
        let mut grads = objective.backward()?;
        let Some((tape, root)) = self.taped else {
            return Ok(grads);
        };
        match grads.remove(&self.logits) {
            Some(g) => tape.backward(&root, g),
            None => Ok(GradStore::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::record;

    /// Every model family's gradients on the tape against Candle's backward (the check
    /// `annt selftest` runs on a GPU): bit for bit on a ResNet, within 1e-5 of the largest
    /// where a batch sum may group in another order (ViT's class token).
    #[test]
    fn the_tape_gives_candles_gradients() {
        use crate::engine::selftest::tape_agreement;
        for name in ["resnet8-tiny", "efficientnet-b0", "vit-ti4"] {
            let (covered, err) = tape_agreement(name, &Device::Cpu).expect(name);
            assert!(covered, "{name}: an op outside the tape");
            let bound = if name.starts_with("resnet") {
                0.0
            } else {
                1e-5
            };
            assert!(err <= bound, "{name}: gradients differ by {err}");
        }
    }

    /// A parameter's gradient that is a small view of a larger buffer gets a buffer of its
    /// own (so it does not keep the rest alive until the optimiser step); a view that is
    /// most of its buffer is kept as it is.
    #[test]
    fn a_small_view_gets_its_own_buffer() {
        let storage_len = |t: &Tensor| {
            let (s, _) = t.storage_and_layout();
            match &*s {
                candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => v.len(),
                _ => 0,
            }
        };
        let both = Tensor::arange(0f32, 100.0, &Device::Cpu).expect("both");
        let small = super::own_buffer(both.narrow(0, 90, 10).expect("view")).expect("own");
        assert_eq!(storage_len(&small), 10);
        assert_eq!(small.to_vec1::<f32>().expect("v")[0], 90.0);
        let large = super::own_buffer(both.narrow(0, 40, 60).expect("view")).expect("own");
        assert_eq!(storage_len(&large), 100);
    }

    /// `x·w` and `(x·w)·w` through attached nodes: the tape's gradient of `w` sums its two
    /// uses; an op outside the tape, a second recording, or a root the tape did not make
    /// leave the caller on Candle's backward.
    #[test]
    fn the_tape_sums_a_shared_value_and_refuses_what_it_does_not_cover() {
        use crate::models::layers::custom::attach2;
        let dev = Device::Cpu;
        let w = candle_core::Var::new(&[3f32], &dev).expect("w");
        let x = Tensor::new(&[2f32], &dev).expect("x");
        let mul = |a: &Tensor, b: &Tensor| {
            let value = (a.detach() * b.detach()).expect("value");
            attach2(
                "mul",
                a,
                b,
                value,
                Box::new(|a, b, g| Ok(((g * b)?, (g * a)?))),
            )
            .expect("attach")
        };
        let r = record();
        let y = mul(&x, w.as_tensor());
        let z = mul(&y, w.as_tensor());
        let tape = r.finish(&z).expect("covered");
        let grads = tape
            .backward(&z, Tensor::new(&[1f32], &dev).expect("one"))
            .expect("backward");
        // z = x·w², dz/dw = 2·x·w = 12.
        let g = grads.get(w.as_tensor()).expect("grad").to_vec1::<f32>();
        assert_eq!(g.expect("values"), vec![12.0]);

        let r = record();
        let outside = w.as_tensor().exp().expect("exp");
        let z = mul(&x, &outside);
        assert!(r.finish(&z).is_none(), "an op outside the tape");

        let first = record();
        let y = mul(&x, w.as_tensor());
        let _second = record();
        assert!(first.finish(&y).is_none(), "a newer recording replaced it");

        let r = record();
        let y = mul(&x, w.as_tensor());
        let not_made = (&y + 1.0).expect("add");
        assert!(
            r.finish(&not_made).is_none(),
            "a root the tape did not make"
        );
    }
}
