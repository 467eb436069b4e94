//! A/B timing of a whole network compiled two ways: `modelab GRAPH.yaml VAR A B [SECONDS]`
//! compiles the graph with environment variable VAR=A and VAR=B (`-`: unset), checks that
//! both give the same bits, then alternates single runs of the two models (`CNNC_THREADS=n`
//! threads each, default 1) and prints both medians and minima and the median ratio of the
//! pairs (B/A). As `examples/convab.rs` for one layer: on a shared host only figures
//! measured alternately in one process compare.
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (path, var, va, vb) = (&a[0], &a[1], &a[2], &a[3]);
    let seconds: f64 = a.get(4).map_or(10.0, |s| s.parse().unwrap());
    let threads: usize = std::env::var("CNNC_THREADS").map_or(1, |v| v.parse().unwrap());
    let mut g = cnnc::format::load(path).unwrap();
    cnnc::weights::bind(&mut g, None).unwrap();
    let models: Vec<cnnc::Model> = [va, vb]
        .iter()
        .map(|v| {
            match v.as_str() {
                "-" => std::env::remove_var(var),
                v => std::env::set_var(var, v),
            }
            let opts = cnnc::Options {
                threads,
                ..cnnc::Options::default()
            };
            cnnc::compile(&g, &opts).unwrap()
        })
        .collect();
    let s = g.input_shape();
    let data = (0..s.len())
        .map(|i| ((i % 17) as f32 - 8.0) * 0.1)
        .collect();
    let x = cnnc::Tensor::new(vec![1, s.c, s.h, s.w], data).unwrap();
    let outs: Vec<_> = models.iter().map(|m| m.run(&x).unwrap()).collect();
    let same = outs[0].iter().zip(&outs[1]).all(|(p, q)| {
        p.data()
            .iter()
            .zip(q.data())
            .all(|(u, v)| u.to_bits() == v.to_bits())
    });
    println!("outputs {}", if same { "bit-identical" } else { "DIFFER" });
    let mut bufs = outs;
    let mut times = [Vec::new(), Vec::new()];
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < seconds {
        for (i, m) in models.iter().enumerate() {
            let t = Instant::now();
            m.run_into(&x, &mut bufs[i]).unwrap();
            times[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let ratios: Vec<f64> = times[0].iter().zip(&times[1]).map(|(p, q)| q / p).collect();
    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let min = |v: &[f64]| v.iter().cloned().fold(f64::MAX, f64::min);
    println!(
        "{var}={va}: median {:.3} ms min {:.3} | {var}={vb}: median {:.3} ms min {:.3} | B/A median {:.3} ({} pairs, {threads} thread(s))",
        med(&times[0]),
        min(&times[0]),
        med(&times[1]),
        min(&times[1]),
        med(&ratios),
        ratios.len()
    );
}
