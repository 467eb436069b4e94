//! A thin width-generic layer over iced-x86's `CodeAssembler`: the same call emits the
//! xmm (VEX), ymm (VEX) or zmm (EVEX) form of an instruction, so one generator serves
//! AVX2 and AVX-512. Registers are numbered `0..32` (`0..16` below 512 bits).
use iced_x86::code_asm::{
    dword_bcst, dword_ptr, get_xmm, get_ymm, get_zmm, xmmword_ptr, ymmword_ptr, zmmword_ptr,
    AsmMemoryOperand, AsmRegisterK, AsmRegisterXmm, AsmRegisterYmm, AsmRegisterZmm, CodeAssembler,
    CodeLabel,
};
use iced_x86::{Encoder, IcedError, Register};
use std::collections::HashMap;

use crate::error::{Error, Result};

/// Vector width of the emitted instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Width {
    X128,
    Y256,
    Z512,
}

impl Width {
    /// f32 lanes per register.
    pub fn lanes(self) -> usize {
        match self {
            Width::X128 => 4,
            Width::Y256 => 8,
            Width::Z512 => 16,
        }
    }
    pub fn bytes(self) -> usize {
        self.lanes() * 4
    }
    /// The ISA level that emits this width, as `--isa` names it.
    pub fn isa_name(self) -> &'static str {
        match self {
            Width::X128 => "sse",
            Width::Y256 => "avx2",
            Width::Z512 => "avx512",
        }
    }
    /// Registers the encoding can name (VEX: 16, EVEX: 32).
    pub fn registers(self) -> usize {
        if self == Width::Z512 {
            32
        } else {
            16
        }
    }
}

pub(crate) fn asm_err(e: IcedError) -> Error {
    Error::Codegen(format!("x86 assembler: {e}"))
}

/// Vector register `i` at each width (`i < 32`; below AVX-512, `i < 16`), for the
/// kernels' own instructions.
pub(crate) fn xr(i: usize) -> AsmRegisterXmm {
    get_xmm(Register::XMM0 + i as u32).expect("xmm index below 32")
}
pub(crate) fn yr(i: usize) -> AsmRegisterYmm {
    get_ymm(Register::YMM0 + i as u32).expect("ymm index below 32")
}
pub(crate) fn zr(i: usize) -> AsmRegisterZmm {
    get_zmm(Register::ZMM0 + i as u32).expect("zmm index below 32")
}

/// Emits one instruction in the form of the current width: `$r` registers, `$m` a memory
/// operand of the vector's size.
macro_rules! wide {
    ($s:ident, $op:ident ( $($arg:tt)* )) => {
        match $s.w {
            Width::X128 => wide!(@args $s, $op, xr, xmmword_ptr, [] $($arg)*),
            Width::Y256 => wide!(@args $s, $op, yr, ymmword_ptr, [] $($arg)*),
            Width::Z512 => wide!(@args $s, $op, zr, zmmword_ptr, [] $($arg)*),
        }
    };
    (@args $s:ident, $op:ident, $r:ident, $m:ident, [$($done:expr,)*] r($e:expr) $(, $($rest:tt)*)?) => {
        wide!(@args $s, $op, $r, $m, [$($done,)* $r($e),] $($($rest)*)?)
    };
    (@args $s:ident, $op:ident, $r:ident, $m:ident, [$($done:expr,)*] m($e:expr) $(, $($rest:tt)*)?) => {
        wide!(@args $s, $op, $r, $m, [$($done,)* $m($e),] $($($rest)*)?)
    };
    (@args $s:ident, $op:ident, $r:ident, $m:ident, [$($done:expr,)*]) => {
        $s.a.$op($($done),*).map_err(asm_err)
    };
}

/// Lanes `lo..hi` (`hi <= 16`) as the bits of an AVX-512 mask register.
pub(crate) fn lane_bits(lo: usize, hi: usize) -> u32 {
    debug_assert!(lo <= hi && hi <= 16);
    ((1u32 << hi) - 1) & !((1u32 << lo) - 1)
}

/// The lane masks of a kernel's masked loads and stores: AVX-512 sets a mask register;
/// below, a vector register is loaded from a constant of the kernel, emitted after its
/// code by [`Masks::emit_data`] (a label plus a displacement is not RIP-relative in iced's
/// assembler). Masks of the same lanes share one constant.
#[derive(Default)]
pub(crate) struct Masks(Vec<((usize, usize), CodeLabel)>);

impl Masks {
    /// AVX-512: lanes `lo..hi` in `k` (through `eax`); below: in vector register `reg`.
    pub fn set(
        &mut self,
        v: &mut Vasm,
        (k, reg): (AsmRegisterK, usize),
        lo: usize,
        hi: usize,
    ) -> Result<()> {
        if v.w == Width::Z512 {
            return v.kmask(k, lo, hi);
        }
        let label = match self.0.iter().find(|m| m.0 == (lo, hi)) {
            Some(m) => m.1,
            None => {
                let label = v.a.create_label();
                self.0.push(((lo, hi), label));
                label
            }
        };
        v.load(reg, AsmMemoryOperand::from(label))
    }

    /// The constants of the masks [`Self::set`] loaded, after the kernel's code.
    pub fn emit_data(self, v: &mut Vasm) -> Result<()> {
        for ((lo, hi), mut label) in self.0 {
            v.a.set_label(&mut label).map_err(asm_err)?;
            v.mask_data(lo, hi)?;
        }
        Ok(())
    }
}

/// The assembler and the width its vector instructions use.
pub(crate) struct Vasm {
    pub a: CodeAssembler,
    pub w: Width,
}

impl Vasm {
    pub fn new(w: Width) -> Result<Self> {
        Ok(Vasm {
            a: CodeAssembler::new(64).map_err(asm_err)?,
            w,
        })
    }

    /// AVX-512: mask register `k` = lanes `lo..hi` (through `eax`).
    pub fn kmask(&mut self, k: AsmRegisterK, lo: usize, hi: usize) -> Result<()> {
        self.kmask_bits(k, lane_bits(lo, hi))
    }

    /// AVX-512: mask register `k` = `bits` (through `eax`).
    pub fn kmask_bits(&mut self, k: AsmRegisterK, bits: u32) -> Result<()> {
        use iced_x86::code_asm::eax;
        self.a.mov(eax, bits as i32).map_err(asm_err)?;
        self.a.kmovw(k, eax).map_err(asm_err)
    }

    /// A vector constant of this width for `vmaskmovps`: all ones in lanes `lo..hi`, zero
    /// in the others.
    pub fn mask_data(&mut self, lo: usize, hi: usize) -> Result<()> {
        let lanes: Vec<u32> = (0..self.w.lanes())
            .map(|i| if (lo..hi).contains(&i) { u32::MAX } else { 0 })
            .collect();
        self.a.dd(&lanes).map_err(asm_err)
    }

    /// `acc += a * b` (registers).
    pub fn fma(&mut self, acc: usize, a: usize, b: usize) -> Result<()> {
        wide!(self, vfmadd231ps(r(acc), r(a), r(b)))
    }

    /// `acc += a * *mem` (a vector from memory).
    pub fn fma_mem(&mut self, acc: usize, a: usize, mem: AsmMemoryOperand) -> Result<()> {
        wide!(self, vfmadd231ps(r(acc), r(a), m(mem)))
    }

    /// `acc += a * broadcast(*mem)` with an EVEX embedded broadcast (512 bits only).
    pub fn fma_bcst(&mut self, acc: usize, a: usize, mem: AsmMemoryOperand) -> Result<()> {
        debug_assert_eq!(self.w, Width::Z512);
        self.a
            .vfmadd231ps(zr(acc), zr(a), dword_bcst(mem))
            .map_err(asm_err)
    }

    /// `dst = a + broadcast(*mem)` (512 bits only).
    pub fn add_bcst(&mut self, dst: usize, a: usize, mem: AsmMemoryOperand) -> Result<()> {
        debug_assert_eq!(self.w, Width::Z512);
        self.a
            .vaddps(zr(dst), zr(a), dword_bcst(mem))
            .map_err(asm_err)
    }

    /// Broadcasts the f32 bits in `eax` into register `r` (AVX-512: `vpbroadcastd` from the
    /// GPR, any of the 32 registers; below: `vmovd` to the xmm, then `vbroadcastss`).
    pub fn splat_eax(&mut self, r: usize) -> Result<()> {
        use iced_x86::code_asm::eax;
        if self.w == Width::Z512 {
            return self.a.vpbroadcastd(zr(r), eax).map_err(asm_err);
        }
        self.a.vmovd(xr(r), eax).map_err(asm_err)?;
        match self.w {
            Width::X128 => self.a.vbroadcastss(xr(r), xr(r)),
            _ => self.a.vbroadcastss(yr(r), xr(r)),
        }
        .map_err(asm_err)
    }

    /// `dst = broadcast(*mem)`.
    pub fn bcst(&mut self, dst: usize, mem: AsmMemoryOperand) -> Result<()> {
        match self.w {
            Width::X128 => self.a.vbroadcastss(xr(dst), dword_ptr(mem)),
            Width::Y256 => self.a.vbroadcastss(yr(dst), dword_ptr(mem)),
            Width::Z512 => self.a.vbroadcastss(zr(dst), dword_ptr(mem)),
        }
        .map_err(asm_err)
    }

    pub fn zero(&mut self, dst: usize) -> Result<()> {
        wide!(self, vxorps(r(dst), r(dst), r(dst)))
    }

    pub fn load(&mut self, dst: usize, mem: AsmMemoryOperand) -> Result<()> {
        wide!(self, vmovups(r(dst), m(mem)))
    }

    pub fn store(&mut self, mem: AsmMemoryOperand, src: usize) -> Result<()> {
        wide!(self, vmovups(m(mem), r(src)))
    }

    /// `dst = a + *mem`.
    pub fn add_mem(&mut self, dst: usize, a: usize, mem: AsmMemoryOperand) -> Result<()> {
        wide!(self, vaddps(r(dst), r(a), m(mem)))
    }

    pub fn add(&mut self, dst: usize, a: usize, b: usize) -> Result<()> {
        wide!(self, vaddps(r(dst), r(a), r(b)))
    }

    pub fn mul(&mut self, dst: usize, a: usize, b: usize) -> Result<()> {
        wide!(self, vmulps(r(dst), r(a), r(b)))
    }

    /// `dst = max(a, b)`; where either is NaN the result is `b` (so `max(0, x)` keeps a NaN
    /// `x`, and `-0.0`, as the Cranelift kernels' ReLU does).
    pub fn max(&mut self, dst: usize, a: usize, b: usize) -> Result<()> {
        wide!(self, vmaxps(r(dst), r(a), r(b)))
    }

    /// `dst = min(a, b)`, `b` where either is NaN.
    pub fn min(&mut self, dst: usize, a: usize, b: usize) -> Result<()> {
        wide!(self, vminps(r(dst), r(a), r(b)))
    }

    /// `body` emitted once and run `count` times, counted down in `counter` (the body must
    /// leave it alone; it advances its own pointers). `count == 0` emits nothing (the
    /// loop tests at its bottom: emitted, it would run 2^64 times).
    pub fn counted_loop(
        &mut self,
        counter: iced_x86::code_asm::AsmRegister64,
        count: usize,
        body: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        self.a.mov(counter, count as u64).map_err(asm_err)?;
        let mut top = self.a.create_label();
        self.a.set_label(&mut top).map_err(asm_err)?;
        body(self)?;
        self.a.dec(counter).map_err(asm_err)?;
        self.a.jnz(top).map_err(asm_err)
    }

    /// Zero-masked load of the lanes set in `k1` (masked-off lanes do not fault: AVX-512).
    pub fn load_k1(&mut self, dst: usize, mem: AsmMemoryOperand) -> Result<()> {
        self.a
            .vmovups(zr(dst).k1().z(), zmmword_ptr(mem))
            .map_err(asm_err)
    }

    /// Store of the lanes set in `k1` (AVX-512).
    pub fn store_k1(&mut self, mem: AsmMemoryOperand, src: usize) -> Result<()> {
        self.a
            .vmovups(zmmword_ptr(mem).k1(), zr(src))
            .map_err(asm_err)
    }

    /// `dst = a + *mem` on the lanes of `k1`, zero elsewhere (AVX-512).
    pub fn add_mem_k1(&mut self, dst: usize, a: usize, mem: AsmMemoryOperand) -> Result<()> {
        self.a
            .vaddps(zr(dst).k1().z(), zr(a), zmmword_ptr(mem))
            .map_err(asm_err)
    }

    /// AVX2 masked load: the lanes whose sign bit is set in register `mask`, zero elsewhere
    /// (masked-off lanes do not fault).
    pub fn maskload(&mut self, dst: usize, mask: usize, mem: AsmMemoryOperand) -> Result<()> {
        match self.w {
            Width::X128 => self.a.vmaskmovps(xr(dst), xr(mask), xmmword_ptr(mem)),
            _ => self.a.vmaskmovps(yr(dst), yr(mask), ymmword_ptr(mem)),
        }
        .map_err(asm_err)
    }

    /// AVX2 masked store of the lanes whose sign bit is set in `mask`.
    pub fn maskstore(&mut self, mem: AsmMemoryOperand, mask: usize, src: usize) -> Result<()> {
        match self.w {
            Width::X128 => self.a.vmaskmovps(xmmword_ptr(mem), xr(mask), xr(src)),
            _ => self.a.vmaskmovps(ymmword_ptr(mem), yr(mask), yr(src)),
        }
        .map_err(asm_err)
    }

    /// The position-independent machine code, each instruction encoded once.
    ///
    /// `CodeAssembler::assemble` runs iced's `BlockEncoder`, which encodes every instruction
    /// several times to pick the shortest form of each branch: about 100 ns an instruction,
    /// 2.7 of SqueezeNet's 3.5 ms of micro-kernel generation (27,828 instructions in 143
    /// kernels, warm; 11 of 12 ms in a process's first compile). Our kernels refer to
    /// labels only from `jcc` / `jmp` and from RIP-relative loads of their own constants:
    /// a backward reference knows its target (a branch takes the short form when it
    /// reaches); a forward one gets a 32-bit field, patched once its label is placed.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        let code = self.a.take_instructions();
        // CodeAssembler gives the instruction after `set_label` the label's id as its `ip`
        // (ids start at 1), and a reference to the label the id as its target address.
        let labelled: HashMap<u64, usize> = code
            .iter()
            .enumerate()
            .filter(|(_, ins)| ins.ip() != 0)
            .map(|(i, ins)| (ins.ip(), i))
            .collect();
        let target_of = |label: u64| {
            labelled
                .get(&label)
                .copied()
                .ok_or_else(|| Error::Codegen("x86 assembler: a reference to no label".into()))
        };
        let mut enc = Encoder::new(64);
        let mut start = vec![0u64; code.len()];
        // (index of the target, offset of the 32-bit field, end of its instruction)
        let mut forward = Vec::new();
        let mut pos = 0u64;
        for (i, ins) in code.iter().enumerate() {
            start[i] = pos;
            let mut ins = *ins;
            let mut patch = None;
            if ins.is_jcc_short_or_near() || ins.is_jmp_short_or_near() {
                let target = target_of(ins.near_branch_target())?;
                if target <= i {
                    // A short branch is 2 bytes; rel8 counts from its end.
                    let back = start[target] as i64 - (pos as i64 + 2);
                    if back >= i64::from(i8::MIN) {
                        ins.as_short_branch();
                    } else {
                        ins.as_near_branch();
                    }
                    ins.set_near_branch64(start[target]);
                } else {
                    ins.as_near_branch();
                    ins.set_near_branch64(pos);
                    patch = Some(target);
                }
            } else if ins.is_ip_rel_memory_operand() {
                let target = target_of(ins.ip_rel_memory_address())?;
                let known = target <= i;
                ins.set_memory_displacement64(if known { start[target] } else { pos });
                patch = (!known).then_some(target);
            }
            let len = enc.encode(&ins, pos).map_err(asm_err)?;
            if let Some(target) = patch {
                // A near branch's rel32 ends it; a memory operand's displacement may not.
                let field = match enc.get_constant_offsets().displacement_size() {
                    4 => enc.get_constant_offsets().displacement_offset(),
                    _ => len - 4,
                };
                forward.push((target, pos as usize + field, pos as usize + len));
            }
            pos += len as u64;
        }
        let mut bytes = enc.take_buffer();
        for (target, field, end) in forward {
            let rel = i32::try_from(start[target] as i64 - end as i64)
                .map_err(|_| Error::Codegen("x86 assembler: a reference beyond 2 GB".into()))?;
            bytes[field..field + 4].copy_from_slice(&rel.to_le_bytes());
        }
        Ok(bytes)
    }
}

/// Intel-syntax disassembly of `code`, one instruction a line with its offset.
pub fn disassemble(code: &[u8]) -> String {
    use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
    let mut dec = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut fmt = IntelFormatter::new();
    let mut out = String::new();
    let mut text = String::new();
    for ins in &mut dec {
        text.clear();
        fmt.format(&ins, &mut text);
        out.push_str(&format!("  {:5x}:  {text}\n", ins.ip()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::code_asm::{dword_ptr, ecx, rax, rdi};

    /// A loop with a backward branch, a forward one over more than a short branch
    /// reaches, and RIP-relative loads of constants placed after the code, at `w`.
    fn sample(w: Width) -> Vasm {
        let mut v = Vasm::new(w).unwrap();
        let mut top = v.a.create_label();
        let mut skip = v.a.create_label();
        let mut table = v.a.create_label();
        v.a.set_label(&mut top).unwrap();
        v.a.mov(ecx, dword_ptr(table)).unwrap();
        v.a.test(rax, rax).unwrap();
        v.a.jnz(skip).unwrap();
        for r in 0..40 {
            v.fma(r % 8, 8, 9).unwrap();
        }
        v.a.set_label(&mut skip).unwrap();
        v.a.dec(rdi).unwrap();
        v.a.jnz(top).unwrap();
        v.a.add(ecx, dword_ptr(table)).unwrap();
        v.a.ret().unwrap();
        v.a.set_label(&mut table).unwrap();
        v.a.dd(&[7, u32::MAX]).unwrap();
        v
    }

    #[test]
    fn one_pass_encoding_gives_the_block_encoders_instructions() {
        for w in [Width::X128, Width::Y256, Width::Z512] {
            let ours = sample(w).finish().unwrap();
            let theirs = sample(w).a.assemble(0).unwrap();
            assert_eq!(disassemble(&ours), disassemble(&theirs), "{w:?}");
            assert_eq!(ours[ours.len() - 8..], theirs[theirs.len() - 8..]);
        }
    }

    /// A loop of no iterations emits neither its counter, its body nor its branch (a
    /// bottom-tested loop would run 2^64 times); one of 3 emits all three.
    #[test]
    fn a_counted_loop_of_zero_emits_nothing() {
        let emit = |count: usize| {
            let mut v = Vasm::new(Width::Z512).unwrap();
            let mut ran = false;
            v.counted_loop(rax, count, |v| {
                ran = true;
                v.fma(0, 1, 2)
            })
            .unwrap();
            v.a.ret().unwrap();
            (ran, disassemble(&v.finish().unwrap()))
        };
        let (ran, code) = emit(0);
        assert!(!ran);
        assert_eq!(code.lines().count(), 1, "{code}");
        let (ran, code) = emit(3);
        assert!(ran);
        assert_eq!(code.lines().count(), 5, "{code}");
    }

    #[test]
    fn a_reference_to_a_label_never_placed_is_an_error() {
        let mut v = Vasm::new(Width::Z512).unwrap();
        let nowhere = v.a.create_label();
        v.a.jnz(nowhere).unwrap();
        v.a.ret().unwrap();
        assert!(v.finish().unwrap_err().to_string().contains("no label"));
    }
}
