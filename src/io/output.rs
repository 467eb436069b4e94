//! Writing a command's outputs safely: never over one of its inputs, checked before
//! the work starts, and atomically (a temporary file in the same folder, renamed into
//! place), so a failed command leaves nothing half-written.
use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An output file being prepared: a temporary file beside `path`, created (so the
/// folder is known to be writable) before the work; [`Output::commit`] renames it.
pub struct Output {
    path: PathBuf,
    file: tempfile::NamedTempFile,
}

impl Output {
    /// Checks `path` can be written and names none of `inputs` (each `(what, path)`,
    /// e.g. `("the graph", graph.yaml)`), and creates its temporary file.
    pub fn create(path: &Path, inputs: &[(&str, &Path)]) -> Result<Self> {
        for (what, input) in inputs {
            if same_file(path, input) {
                return Err(Error::Input(format!(
                    "{}: this is {what} the command reads; write the output to another file",
                    path.display()
                )));
            }
        }
        if path.is_dir() {
            return Err(Error::Input(format!(
                "{}: is a folder; give a file name for the output",
                path.display()
            )));
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(Error::Input(format!(
                "{}: cannot write the output: the folder {} does not exist",
                path.display(),
                dir.display()
            )));
        }
        let file = tempfile::Builder::new()
            .prefix(".cnnc-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| {
                Error::Input(format!(
                    "{}: cannot write the output: cannot create a file in {} ({})",
                    path.display(),
                    dir.display(),
                    std::io::Error::from(e.kind())
                ))
            })?;
        Ok(Output {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes` to the temporary file; nothing appears at the path yet.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let path = self.path.clone();
        self.file
            .write_all(bytes)
            .and_then(|()| self.file.as_file().sync_all())
            .map_err(|e| Error::io(path, e))
    }

    /// Renames the written temporary file to the output path.
    pub fn commit(self) -> Result<()> {
        let path = self.path;
        self.file
            .persist(&path)
            .map(drop)
            .map_err(|e| Error::io(path, e.error))
    }
}

/// Writes `bytes` to `path` atomically, refusing to replace any of `inputs`.
pub fn write_file(path: &Path, bytes: &[u8], inputs: &[(&str, &Path)]) -> Result<()> {
    let mut out = Output::create(path, inputs)?;
    out.write(bytes)?;
    out.commit()
}

/// Writes several files, all or none: each to its temporary file first; then renamed in
/// order, and if a rename fails, the files already renamed are removed again.
pub fn write_all(files: Vec<(Output, Vec<u8>)>) -> Result<()> {
    let mut staged = Vec::new();
    for (mut out, bytes) in files {
        out.write(&bytes)?;
        staged.push(out);
    }
    let mut done: Vec<PathBuf> = Vec::new();
    for out in staged {
        let path = out.path.clone();
        if let Err(e) = out.commit() {
            for p in &done {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
        done.push(path);
    }
    Ok(())
}

/// Whether `a` and `b` name one file (the same path, a link to it, or a hard link).
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(ma), Ok(mb)) => ma.dev() == mb.dev() && ma.ino() == mb.ino(),
        // An output that does not exist yet cannot be an existing input; compare the
        // paths anyway for inputs that vanished.
        _ => match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(ca), Ok(cb)) => ca == cb,
            _ => a == b,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_refuse_inputs_and_folders_and_appear_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("graph.yaml");
        std::fs::write(&input, "x").unwrap();
        let link = dir.path().join("link.yaml");
        std::fs::hard_link(&input, &link).unwrap();
        for p in [&input, &link] {
            let e = Output::create(p, &[("the graph", &input)]).err().unwrap();
            assert!(e
                .to_string()
                .contains("this is the graph the command reads"));
        }
        let e = Output::create(dir.path(), &[]).err().unwrap();
        assert!(e.to_string().contains("is a folder"));
        let e = Output::create(&dir.path().join("no/such/dir/x.npy"), &[])
            .err()
            .unwrap();
        assert!(e.to_string().contains("the folder"), "{e}");

        let out_path = dir.path().join("out.npy");
        let mut out = Output::create(&out_path, &[("the graph", &input)]).unwrap();
        out.write(b"data").unwrap();
        assert!(!out_path.exists());
        out.commit().unwrap();
        assert_eq!(std::fs::read(&out_path).unwrap(), b"data");
        // A dropped output leaves nothing behind.
        drop(Output::create(&dir.path().join("never.npy"), &[]).unwrap());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }
}
