//! Compile time of ResNet-18's distinct kernels in one module:
//! `cargo run --release --example compile_resnet18`.
use cnnc::jit::*;
use std::time::Instant;

#[allow(clippy::too_many_arguments)]
fn conv(
    c: usize,
    hw: usize,
    k: usize,
    f: usize,
    s: usize,
    p: usize,
    relu: bool,
    residual: bool,
) -> ConvSpec {
    let mut spec = ConvSpec::square(c, hw, k, f, s, p);
    spec.bias = true;
    spec.relu = relu;
    spec.residual = residual;
    spec
}

fn main() {
    let mut specs = vec![conv(3, 224, 64, 7, 2, 3, true, false)];
    specs.push(conv(64, 56, 64, 3, 1, 1, true, false));
    specs.push(conv(64, 56, 64, 3, 1, 1, true, true));
    for (cin, hw, cout) in [(64, 56, 128), (128, 28, 256), (256, 14, 512)] {
        let o = hw / 2;
        specs.push(conv(cin, hw, cout, 3, 2, 1, true, false));
        specs.push(conv(cin, hw, cout, 1, 2, 0, false, false));
        specs.push(conv(cout, o, cout, 3, 1, 1, true, true));
        specs.push(conv(cout, o, cout, 3, 1, 1, true, false));
    }
    for _ in 0..3 {
        let t0 = Instant::now();
        let mut km = KernelModule::new().unwrap();
        let t1 = Instant::now();
        let mut per = Vec::new();
        for s in &specs {
            let t = Instant::now();
            km.add_conv(s).unwrap();
            per.push(t.elapsed().as_secs_f64() * 1e3);
        }
        km.add_pool(&PoolSpec::square(PoolKind::Max, 64, 112, 3, 2, 1))
            .unwrap();
        km.add_elementwise(&EltSpec::GlobalAvgPool {
            channels: 512,
            hw: 49,
        })
        .unwrap();
        let mut fc = FcSpec::new(512, 1000, 1);
        fc.bias = true;
        km.add_fc(&fc).unwrap();
        km.add_elementwise(&EltSpec::Softmax {
            channels: 1000,
            hw: 1,
        })
        .unwrap();
        let t2 = Instant::now();
        let _code = km.finalize().unwrap();
        let t3 = Instant::now();
        println!(
            "{} convs + pool/gap/fc/softmax: new {:.2} ms, define {:.2} ms, finalize {:.2} ms, total {:.2} ms",
            specs.len(),
            (t1 - t0).as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3,
            (t3 - t2).as_secs_f64() * 1e3,
            (t3 - t0).as_secs_f64() * 1e3
        );
        println!(
            "per conv (ms): {:?}",
            per.iter()
                .map(|x| (x * 100.0).round() / 100.0)
                .collect::<Vec<_>>()
        );
    }
}
