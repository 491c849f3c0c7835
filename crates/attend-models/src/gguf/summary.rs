//! A human-readable summary of a GGUF file, for `attend inspect`.

use std::collections::BTreeMap;
use std::fmt;

use super::Gguf;

impl Gguf {
    /// A multi-line description: version, alignment, every metadata entry
    /// (long strings and arrays shortened), a count of tensors and bytes per
    /// ggml type, and the tensor table.
    pub fn summary(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Gguf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "GGUF v{}, {} bytes, {} metadata entries, {} tensors, alignment {}, data at byte {}",
            self.version(),
            self.bytes().len(),
            self.metadata_len(),
            self.tensors().len(),
            self.alignment(),
            self.data_offset(),
        )?;

        writeln!(f, "metadata:")?;
        for (key, value) in self.metadata() {
            writeln!(f, "  {key}: {} = {value}", value.type_description())?;
        }

        let mut per_type: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for info in self.tensors() {
            let slot = per_type.entry(info.ggml_type().name()).or_default();
            slot.0 += 1;
            slot.1 += info.size_bytes();
        }
        writeln!(f, "tensor types:")?;
        for (name, (count, bytes)) in per_type {
            writeln!(f, "  {name}: {count} tensors, {bytes} bytes")?;
        }

        writeln!(f, "tensors:")?;
        for info in self.tensors() {
            writeln!(
                f,
                "  {} {} {:?} at +{}",
                info.name(),
                info.ggml_type(),
                info.dims(),
                info.offset()
            )?;
        }
        Ok(())
    }
}
