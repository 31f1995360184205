//! Names for what the records point at: functions and lines from the binary, type names from the
//! target's type descriptors, read from the live process or, once it has gone, from the file.

use std::sync::Arc;

use crate::{
    gobin::runtime_types::{GoType, TypeNames},
    gobin::symbolize::Symbolizer,
    gobin::{GoBinary, SourcePosition},
    lifecycle::sites::Resolve,
    memory::Memory,
    process::Process,
};

/// Names from the live process, falling back to the binary file for static data (type
/// descriptors) once the process has exited.
pub(super) struct Names {
    symbols: Symbolizer,
    types: TypeNames,
    memory: ProcessOrFile,
}

/// The process when there is one (`None` when replaying a recording), else the binary file.
pub(super) struct ProcessOrFile {
    pub process: Option<Arc<Process>>,
    pub binary: Arc<GoBinary>,
    pub load_bias: u64,
}

impl Memory for ProcessOrFile {
    fn read(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let live = match &self.process {
            Some(p) => p.read(addr, buf),
            None => Err(std::io::ErrorKind::NotFound.into()),
        };
        live.or_else(|e| {
            self.binary
                .read_static(addr.wrapping_sub(self.load_bias), buf)
                .map_err(|_| e)
        })
    }
}

impl Names {
    pub(super) fn new(binary: Arc<GoBinary>, process: Option<Arc<Process>>, load_bias: u64) -> Self {
        Names {
            symbols: Symbolizer::new(binary.clone(), load_bias),
            types: TypeNames::new(binary.types_base().map(|b| b.wrapping_add(load_bias))),
            memory: ProcessOrFile {
                process,
                binary,
                load_bias,
            },
        }
    }
}

impl Resolve for Names {
    fn position(&mut self, pc: u64) -> Option<Arc<SourcePosition>> {
        self.symbols.position(pc)
    }

    fn go_type(&mut self, type_ptr: u64) -> Option<Arc<GoType>> {
        self.types.resolve(&self.memory, type_ptr)
    }

    fn memory(&self) -> &dyn Memory {
        &self.memory
    }
}
