//! The intermediate representation: a petgraph DAG with one node per layer.
//!
//! Nodes carry their op with typed attributes, their inferred output shape and (once
//! bound) their parameter tensors; edges carry the input slot, so the order of `add`
//! and `concat` inputs is kept. The graph is a `StableDiGraph` so passes can delete and
//! replace nodes without invalidating the indices they hold.
pub mod info;
pub mod limits;
pub mod op;
pub mod print;
pub mod shape;
pub mod stats;

use crate::error::{Error, Result};
use crate::tensor::{fmt_shape, Tensor};
pub use op::{Clip, Conv, Epilogue, Fc, Gemm, Hw, Lrn, Op, Pad, Pool};
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
pub use shape::{Shape, ShapeNote, Window};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

pub type NodeId = NodeIndex;

/// One layer of the network.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub op: Op,
    /// The output shape of one batch item, set by shape inference.
    pub shape: Shape,
    /// The window arithmetic of conv and pool nodes, set by shape inference.
    pub note: ShapeNote,
    /// Parameter tensors by PyTorch suffix (`weight`, `bias`, `running_mean`, ...),
    /// empty until weights are bound.
    pub params: BTreeMap<String, Tensor>,
}

impl Node {
    pub fn new(name: impl Into<String>, op: Op) -> Self {
        Node {
            name: name.into(),
            op,
            shape: Shape::default(),
            note: ShapeNote::default(),
            params: BTreeMap::new(),
        }
    }

    pub fn param(&self, suffix: &str) -> Option<&Tensor> {
        self.params.get(suffix)
    }
}

/// How an image file becomes the graph's input tensor.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InputNorm {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

#[derive(Clone, Debug)]
pub struct Graph {
    pub name: String,
    pub dag: StableDiGraph<Node, usize>,
    pub input: NodeId,
    pub outputs: Vec<NodeId>,
    pub norm: Option<InputNorm>,
    /// The safetensors file named by `weights:`, resolved against the graph file's folder.
    pub weights_path: Option<PathBuf>,
    pub seed: u64,
    pub strict_shapes: bool,
}

impl Graph {
    /// A graph with only its input node; layers are added with [`Graph::add_node`].
    pub fn new(name: impl Into<String>, input: Shape) -> Self {
        let mut dag = StableDiGraph::new();
        let mut node = Node::new("input", Op::Input);
        node.shape = input;
        let input = dag.add_node(node);
        Graph {
            name: name.into(),
            dag,
            input,
            outputs: vec![input],
            norm: None,
            weights_path: None,
            seed: 0,
            strict_shapes: false,
        }
    }

    /// Adds a node reading `inputs` in slot order.
    pub fn add_node(&mut self, node: Node, inputs: &[NodeId]) -> NodeId {
        let id = self.dag.add_node(node);
        for (slot, &src) in inputs.iter().enumerate() {
            self.dag.add_edge(src, id, slot);
        }
        id
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.dag[id]
    }
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.dag[id]
    }

    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.dag.node_indices().find(|&i| self.dag[i].name == name)
    }

    pub fn input_shape(&self) -> Shape {
        self.dag[self.input].shape
    }

    /// The nodes `id` reads, in slot order.
    pub fn inputs(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<(usize, NodeId)> = self
            .dag
            .edges_directed(id, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        edges.sort();
        edges.into_iter().map(|(_, n)| n).collect()
    }

    /// The nodes that read `id` (each once, even if it reads it in several slots).
    pub fn readers(&self, id: NodeId) -> Vec<NodeId> {
        let mut r: Vec<NodeId> = self
            .dag
            .neighbors_directed(id, Direction::Outgoing)
            .collect();
        r.sort();
        r.dedup();
        r
    }

    /// Nodes that read `id`, counting the graph's outputs as readers.
    pub fn use_count(&self, id: NodeId) -> usize {
        self.dag.edges_directed(id, Direction::Outgoing).count()
            + self.outputs.iter().filter(|&&o| o == id).count()
    }

    /// Replaces every use of `old` (edges and graph outputs) with `new`.
    pub fn replace_uses(&mut self, old: NodeId, new: NodeId) {
        let uses: Vec<(NodeId, usize, petgraph::stable_graph::EdgeIndex)> = self
            .dag
            .edges_directed(old, Direction::Outgoing)
            .map(|e| (e.target(), *e.weight(), e.id()))
            .collect();
        for (target, slot, edge) in uses {
            self.dag.remove_edge(edge);
            self.dag.add_edge(new, target, slot);
        }
        for o in &mut self.outputs {
            if *o == old {
                *o = new;
            }
        }
    }

    /// Nodes in an order where every node comes after its inputs, ties broken by
    /// insertion order so dumps and schedules are stable.
    pub fn topo_order(&self) -> Result<Vec<NodeId>> {
        let mut indegree: HashMap<NodeId, usize> = self
            .dag
            .node_indices()
            .map(|n| (n, self.dag.edges_directed(n, Direction::Incoming).count()))
            .collect();
        let mut ready: std::collections::BTreeSet<NodeId> = indegree
            .iter()
            .filter(|(_, &d)| d == 0)
            .map(|(&n, _)| n)
            .collect();
        let mut order = Vec::with_capacity(indegree.len());
        while let Some(n) = ready.pop_first() {
            order.push(n);
            for e in self.dag.edges_directed(n, Direction::Outgoing) {
                let d = indegree.get_mut(&e.target()).expect("edge to a live node");
                *d -= 1;
                if *d == 0 {
                    ready.insert(e.target());
                }
            }
        }
        if order.len() != indegree.len() {
            let mut stuck: Vec<&str> = indegree
                .iter()
                .filter(|(_, &d)| d > 0)
                .map(|(&n, _)| self.dag[n].name.as_str())
                .collect();
            stuck.sort();
            return Err(Error::Graph(format!(
                "the graph has a cycle through: {}",
                stuck.join(", ")
            )));
        }
        Ok(order)
    }

    /// Checks each node's input count and sets every output shape and window note, in
    /// topological order. A window that does not tile its input is noted (for a
    /// warning), or an error with `strict_shapes`.
    pub fn infer_shapes(&mut self) -> Result<()> {
        for id in self.topo_order()? {
            if let Some((shape, note)) = self.inferred(id)? {
                let node = &mut self.dag[id];
                node.shape = shape;
                node.note = note;
            }
        }
        Ok(())
    }

    /// Checks, without changing anything, that every node's input count and shape are
    /// what inference gives: a graph built or edited by hand is checked before code is
    /// generated for it.
    pub fn check_shapes(&self) -> Result<()> {
        for id in self.topo_order()? {
            if let Some((shape, _)) = self.inferred(id)? {
                let node = &self.dag[id];
                if shape != node.shape {
                    return Err(Error::Shape(format!(
                        "{}: its recorded shape is {}, but inference gives {shape}",
                        node.name, node.shape
                    )));
                }
            }
        }
        Ok(())
    }

    /// The shape inference gives node `id`, after checking its input count (`None` for
    /// the graph input, whose shape is given).
    fn inferred(&self, id: NodeId) -> Result<Option<(Shape, ShapeNote)>> {
        let inputs = self.inputs(id);
        let node = &self.dag[id];
        let (min, max) = node.op.arity();
        if inputs.len() < min || inputs.len() > max {
            let want = match (min, max) {
                (a, b) if a == b => format!("{a}"),
                (a, usize::MAX) => format!("at least {a}"),
                (a, b) => format!("{a} to {b}"),
            };
            return Err(Error::Graph(format!(
                "{}: {} takes {want} input(s), got {}",
                node.name,
                node.op.kind(),
                inputs.len()
            )));
        }
        if id == self.input {
            return Ok(None);
        }
        if node.op == Op::Input {
            return Err(Error::Graph(format!(
                "{}: a graph has one input node; this is a second",
                node.name
            )));
        }
        let shapes: Vec<Shape> = inputs.iter().map(|&i| self.dag[i].shape).collect();
        shape::infer(&node.name, &node.op, &shapes, self.strict_shapes).map(Some)
    }

    /// Checks that `x` fits the graph's input (`[N, C, H, W]`, or `[C, H, W]` for one
    /// image) and returns it as `[N, C, H, W]`.
    pub fn check_input(&self, x: Tensor) -> Result<Tensor> {
        let s = self.input_shape();
        let want = [s.c, s.h, s.w];
        let dims = x.shape().to_vec();
        let fits = match dims.as_slice() {
            [c, h, w] => [*c, *h, *w] == want,
            [n, c, h, w] => *n >= 1 && [*c, *h, *w] == want,
            _ => false,
        };
        if !fits {
            return Err(Error::Input(format!(
                "the input has shape {}, but the graph takes {} (or Nx{})",
                fmt_shape(&dims),
                fmt_shape(&want),
                fmt_shape(&want)
            )));
        }
        if dims.len() == 3 {
            return x.reshaped(vec![1, s.c, s.h, s.w]);
        }
        Ok(x)
    }

    /// The shapes of the graph's outputs for a batch of `n`.
    pub fn output_dims(&self, n: usize) -> Vec<Vec<usize>> {
        self.outputs
            .iter()
            .map(|&o| self.dag[o].shape.dims(n))
            .collect()
    }

    pub fn node_count(&self) -> usize {
        self.dag.node_count()
    }
}
