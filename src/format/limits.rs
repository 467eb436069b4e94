//! Bounds on what an untrusted graph file may ask of the YAML parser, checked on the
//! raw text before parsing: its size, and how deeply it nests (a parser's time can
//! grow with the square of the depth, and 100,000 nested `[` took 22 s).
use crate::error::{Error, Result};

/// A graph of the 100,000-layer limit takes a few MB; this leaves room for comments.
pub const MAX_BYTES: usize = 16 << 20;

/// A graph nests about 6 levels (document, layers, layer, attributes, a list, and two
/// per `repeat`); 64 leaves room for deep repeats.
pub const MAX_DEPTH: usize = 64;

/// Refuses text over [`MAX_BYTES`] or nesting deeper than [`MAX_DEPTH`] (block
/// indentation, `- ` items and `[`/`{` flow collections together), with the line.
pub fn check(text: &str) -> Result<()> {
    if text.len() > MAX_BYTES {
        return Err(Error::Format(format!(
            "the file is {} bytes, more than the limit of {MAX_BYTES} for a graph",
            text.len()
        )));
    }
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let mut quote: Option<char> = None;
    for (number, line) in text.lines().enumerate() {
        let body = line.trim_start_matches(' ');
        let mut depth = flow;
        if flow == 0 && quote.is_none() && !body.is_empty() && !body.starts_with('#') {
            let indent = line.len() - body.len();
            while indents.last().is_some_and(|&top| top >= indent) {
                indents.pop();
            }
            indents.push(indent);
            // `- - x` nests one sequence per dash.
            let dashes = body
                .split_inclusive(' ')
                .take_while(|w| *w == "- " || *w == "-")
                .count();
            depth = indents.len() + dashes;
        }
        let mut prev = ' ';
        for c in body.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '#') if prev == ' ' || prev == '\t' => break,
                (None, '[' | '{') => {
                    flow += 1;
                    depth = depth.max(indents.len() + flow);
                }
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                _ => {}
            }
            prev = c;
        }
        if depth > MAX_DEPTH {
            return Err(Error::Format(format!(
                "line {}: the YAML nests more than {MAX_DEPTH} levels deep; a graph needs far fewer (is a bracket missing or repeated?)",
                number + 1
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_graphs_pass_and_deep_nesting_is_refused() {
        check("input: [1, 4, 4]\nlayers:\n  - conv: {filters: 2, size: 3, pad: [1, 1]}\n  - repeat: 2\n    layers:\n      - relu # c [[[\n").unwrap();
        let deep_flow = format!("layers: {}{}", "[".repeat(65), "]".repeat(65));
        assert!(check(&deep_flow)
            .unwrap_err()
            .to_string()
            .contains("line 1"));
        let deep_block: String = (0..70).map(|i| format!("{}-\n", " ".repeat(i))).collect();
        assert!(check(&deep_block)
            .unwrap_err()
            .to_string()
            .contains("line 6"));
        let dashes = format!("layers:\n  {}relu\n", "- ".repeat(70));
        assert!(check(&dashes).unwrap_err().to_string().contains("line 2"));
        // Brackets inside quotes and comments do not nest.
        check(&format!(
            "name: '{}'\n# {}\n",
            "[".repeat(100),
            "{".repeat(100)
        ))
        .unwrap();
    }
}
