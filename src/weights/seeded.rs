//! Weights drawn from the graph's seed: He-normal conv and fc weights, zero biases,
//! identity batchnorm and scale_shift. Each layer draws from its own ChaCha stream chosen by its name,
//! so the same seed gives the same weights on every machine, and adding a layer does
//! not change the others.
use super::expected_params;
use crate::ir::Graph;
use crate::tensor::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, StandardNormal};

/// FNV-1a: a stable hash of a layer name (std's hasher is not stable across releases).
fn stream_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

pub fn rng_for(seed: u64, name: &str) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream_of(name));
    rng
}

/// `n` standard-normal values from the stream `(seed, name)`.
pub fn standard_normal(seed: u64, name: &str, n: usize) -> Vec<f32> {
    let mut rng = rng_for(seed, name);
    (0..n).map(|_| StandardNormal.sample(&mut rng)).collect()
}

pub fn init_from_seed(g: &mut Graph) {
    let seed = g.seed;
    let ids: Vec<_> = g.dag.node_indices().collect();
    for id in ids {
        let params = expected_params(g, id);
        let node = g.node_mut(id);
        node.params.clear();
        for (suffix, shape) in params {
            let n: usize = shape.iter().product();
            let value = match (node.op.kind(), suffix) {
                ("batchnorm", "weight" | "running_var") | ("scale_shift", "weight") => {
                    vec![1.0; n]
                }
                (_, "weight") => {
                    let fan_in: usize = shape[1..].iter().product();
                    let he = Normal::new(0.0, (2.0 / fan_in as f64).sqrt()).expect("positive std");
                    let mut rng = rng_for(seed, &node.name);
                    (0..n).map(|_| he.sample(&mut rng) as f32).collect()
                }
                _ => vec![0.0; n],
            };
            let t = Tensor::new(shape, value).expect("values drawn to the shape");
            node.params.insert(suffix.to_string(), t);
        }
    }
}
