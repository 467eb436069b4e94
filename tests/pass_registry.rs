//! The pass registry (one declaration per pass), the verifier's error chain and
//! run-to-fixpoint.
mod common;
use cnnc::passes::{self, Changed, Pass, Pipeline, PASSES};
use cnnc::{Error, Graph, OptLevel, Options};
use common::{example_graphs, graph, Breaker, CONV_RELU};

#[test]
fn each_pass_is_declared_once_and_the_levels_follow_the_declarations() {
    let mut names: Vec<&str> = PASSES.iter().map(|p| p.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), PASSES.len());
    for p in PASSES {
        assert!(!p.description.is_empty(), "{}", p.name);
        assert!(p.level > OptLevel::O0, "{}", p.name);
        assert!(passes::info(p.name).is_ok());
    }
    let at = |level| Pipeline::for_level(level).names();
    assert!(at(OptLevel::O0).is_empty());
    assert_eq!(
        at(OptLevel::O1),
        ["dce", "fold-scale-shift", "fold-batchnorm"]
    );
    assert_eq!(
        at(OptLevel::O2),
        [
            "dce",
            "fold-scale-shift",
            "fold-batchnorm",
            "fuse-epilogue",
            "lower-gemm"
        ]
    );
}

#[test]
fn the_verifier_is_on_by_default() {
    assert!(Options::default().verify);
}

#[test]
fn a_pass_error_keeps_the_verifiers_error_as_its_source() {
    let mut p = Pipeline::new(&Options::level(OptLevel::O0)).unwrap();
    p.push("breaker", Box::new(Breaker));
    let err = p.run(&mut graph(CONV_RELU)).unwrap_err();
    let Error::Pass { pass, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(pass, "breaker");
    let source = std::error::Error::source(&err).expect("a source");
    assert!(
        source
            .to_string()
            .starts_with("c: its recorded shape is 4x8x8, but inference gives 5x8x8"),
        "{source}"
    );
    assert_eq!(
        err.to_string(),
        format!("pass `breaker` broke the graph: {source}")
    );
}

/// Changes the graph every time it runs (renames the conv back and forth).
struct Restless;
impl Pass for Restless {
    fn run(&self, g: &mut Graph) -> cnnc::Result<Changed> {
        let id = g.find("c").or_else(|| g.find("c2")).unwrap();
        let n = g.node_mut(id);
        n.name = if n.name == "c" { "c2" } else { "c" }.into();
        Ok(Changed::Yes)
    }
}

#[test]
fn run_to_fixpoint_stops_when_a_round_changes_nothing_and_refuses_a_pass_that_never_settles() {
    for path in example_graphs() {
        let g = cnnc::format::load(&path).unwrap();
        let mut once = g.clone();
        Pipeline::for_level(OptLevel::O2).run(&mut once).unwrap();
        let mut fix = g.clone();
        let mut p = Pipeline::for_level(OptLevel::O2);
        p.run_to_fixpoint(8);
        let mut rounds = 0;
        p.run_with(&mut fix, &mut |name, _, _| {
            rounds += (name == "dce") as usize
        })
        .unwrap();
        // The pipeline settles in one round: the second changes nothing.
        assert!(rounds <= 2, "{}: {rounds} rounds", path.display());
        let ir = |g: &Graph| cnnc::ir::print::to_text(g).unwrap();
        assert_eq!(ir(&once), ir(&fix), "{}", path.display());
    }
    let mut p = Pipeline::new(&Options::level(OptLevel::O0)).unwrap();
    p.push("restless", Box::new(Restless));
    p.run_to_fixpoint(3);
    let err = p.run(&mut graph(CONV_RELU)).unwrap_err();
    assert!(err.to_string().contains("after 3 rounds"), "{err}");
}
