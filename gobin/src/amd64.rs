//! Where in a Go amd64 function the uprobes go: after the stack-bound check
//! at the entry, and on every RET. Pure decoding of bytes the caller read.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// How many instructions the stack-bound check may take from the start.
/// Go emits at most five (`MOVQ SP, R12; SUBQ $n, R12; JCS; CMPQ R12,
/// 16(R14); JLS` for frames over 4 KiB), and assembly functions one more to
/// load g from thread-local storage.
const PROLOGUE_WINDOW: usize = 8;

/// Offsets of `g.stackguard0` (and `g.stackguard1`, which runtime functions
/// called from C compare with) in the runtime's `g` on 64-bit targets.
const STACKGUARD_OFFSETS: [u64; 2] = [0x10, 0x18];

/// Most `RET` instructions one function may have: each is a uprobe of its
/// own, and the kernel takes tens of milliseconds to attach one. Go emits
/// one per `return` statement the compiler does not merge; real functions
/// have a handful, rarely dozens.
pub const MAX_RETURNS_PER_FUNCTION: usize = 64;
/// Most direct `CALL`s recorded in one function.
pub const MAX_CALLS_PER_FUNCTION: usize = 1 << 14;
/// Instructions decoded between checks of the cancellation flag.
const CHECK_EVERY: usize = 1 << 16;

/// Why decoding stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    TooManyReturns,
    TooManyCalls,
    Cancelled,
}

/// Instruction addresses found in one function's code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sites {
    /// The first instruction after the stack-bound check's conditional
    /// jump, or the function's start when it has no check.
    pub(crate) entry: u64,
    /// Every near RET.
    pub(crate) returns: Vec<u64>,
    /// Every direct near CALL: (its target, the instruction after it).
    pub(crate) calls: Vec<(u64, u64)>,
}

/// Finds the entry and return sites in `code`, the function's bytes loaded
/// at virtual address `address`.
///
/// Go's amd64 prologue compares the stack pointer (or `SP - frame` in R12)
/// with `g.stackguard0` at `16(R14)` and jumps (JBE/JLS) to a trailer that
/// calls `runtime.morestack*` and then jumps back to the function's first
/// instruction. A call that has to grow its stack thus runs the check twice;
/// the entry site is the instruction after the jump, which runs once per
/// call.
///
/// Invariant the kernel side relies on: none of the instructions before the
/// entry site (LEAQ/MOVQ/SUBQ into R12, CMPQ, the conditional jumps, the TLS
/// load of g) writes SP, so at the entry site SP still points at the return
/// address the CALL pushed, exactly as at the function's first byte.
///
/// Stops at the first `RET` over [`MAX_RETURNS_PER_FUNCTION`] or `CALL`
/// over [`MAX_CALLS_PER_FUNCTION`], and when `cancelled` says so.
pub(crate) fn sites(
    code: &[u8],
    address: u64,
    cancelled: impl Fn() -> bool,
) -> Result<Sites, Stop> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut window = Vec::with_capacity(PROLOGUE_WINDOW);
    let mut returns = Vec::new();
    let mut calls = Vec::new();
    let mut instruction = Instruction::default();
    let mut decoded = 0usize;
    while decoder.can_decode() {
        decoded += 1;
        if decoded.is_multiple_of(CHECK_EVERY) && cancelled() {
            return Err(Stop::Cancelled);
        }
        decoder.decode_out(&mut instruction);
        if window.len() < PROLOGUE_WINDOW {
            window.push(instruction);
        }
        match instruction.mnemonic() {
            Mnemonic::Ret => {
                if returns.len() >= MAX_RETURNS_PER_FUNCTION {
                    return Err(Stop::TooManyReturns);
                }
                returns.push(instruction.ip());
            }
            Mnemonic::Call if instruction.op0_kind() == OpKind::NearBranch64 => {
                if calls.len() >= MAX_CALLS_PER_FUNCTION {
                    return Err(Stop::TooManyCalls);
                }
                calls.push((instruction.near_branch_target(), instruction.next_ip()));
            }
            _ => {}
        }
    }
    Ok(Sites {
        entry: entry_after_stack_check(&window).unwrap_or(address),
        returns,
        calls,
    })
}

fn entry_after_stack_check(window: &[Instruction]) -> Option<u64> {
    window.windows(2).find_map(|pair| {
        let (cmp, jump) = (&pair[0], &pair[1]);
        (compares_with_stackguard(cmp) && is_conditional_jump(jump)).then(|| jump.next_ip())
    })
}

/// A Jcc. (iced-x86's `is_jcc_short_or_near` needs its `instr_info`
/// tables; the sixteen mnemonics are cheaper than that feature.)
fn is_conditional_jump(instruction: &Instruction) -> bool {
    use Mnemonic::*;
    matches!(
        instruction.mnemonic(),
        Ja | Jae | Jb | Jbe | Je | Jg | Jge | Jl | Jle | Jne | Jno | Jnp | Jns | Jo | Jp | Js
    )
}

/// `CMP reg, [R14 + 0x10]` (either operand order).
fn compares_with_stackguard(instruction: &Instruction) -> bool {
    if instruction.mnemonic() != Mnemonic::Cmp || instruction.op_count() != 2 {
        return false;
    }
    let kinds = [instruction.op0_kind(), instruction.op1_kind()];
    let register_and_memory = matches!(
        kinds,
        [OpKind::Register, OpKind::Memory] | [OpKind::Memory, OpKind::Register]
    );
    register_and_memory
        && instruction.memory_base() == Register::R14
        && instruction.memory_index() == Register::None
        && STACKGUARD_OFFSETS.contains(&instruction.memory_displacement64())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x40_1000;

    fn never() -> bool {
        false
    }

    #[test]
    fn returns_past_the_cap_stop_the_decoding() {
        let code = vec![0xc3; MAX_RETURNS_PER_FUNCTION];
        assert_eq!(
            sites(&code, BASE, never).unwrap().returns.len(),
            MAX_RETURNS_PER_FUNCTION
        );
        let code = vec![0xc3; MAX_RETURNS_PER_FUNCTION + 1];
        assert_eq!(sites(&code, BASE, never), Err(Stop::TooManyReturns));
    }

    #[test]
    fn a_cancelled_decoding_stops() {
        let code = vec![0x90; 2 * CHECK_EVERY];
        assert_eq!(sites(&code, BASE, || true), Err(Stop::Cancelled));
    }

    #[test]
    fn small_frame_entry_is_after_the_jbe() {
        // cmp rsp,[r14+0x10]; jbe +0x10; push rbp; mov rbp,rsp; pop rbp; ret
        let code = [
            0x49, 0x3b, 0x66, 0x10, 0x76, 0x10, 0x55, 0x48, 0x89, 0xe5, 0x5d, 0xc3,
        ];
        let s = sites(&code, BASE, never).unwrap();
        assert_eq!(s.entry, BASE + 6);
        assert_eq!(s.returns, vec![BASE + 11]);
    }

    #[test]
    fn medium_frame_entry_is_after_the_jbe_that_follows_lea_and_cmp() {
        // lea r12,[rsp-0x100]; cmp r12,[r14+0x10]; jbe near; ret
        let code = [
            0x4c, 0x8d, 0xa4, 0x24, 0x00, 0xff, 0xff, 0xff, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86,
            0x10, 0x00, 0x00, 0x00, 0xc3,
        ];
        let s = sites(&code, BASE, never).unwrap();
        assert_eq!(s.entry, BASE + 18);
        assert_eq!(s.returns, vec![BASE + 18]);
    }

    #[test]
    fn functions_without_a_stack_check_are_entered_at_their_start() {
        // lea rax,[rax+1]; ret; int3 padding
        let code = [0x48, 0x8d, 0x40, 0x01, 0xc3, 0xcc, 0xcc, 0xcc];
        let s = sites(&code, BASE, never).unwrap();
        assert_eq!(s.entry, BASE);
        assert_eq!(s.returns, vec![BASE + 4]);
    }

    #[test]
    fn direct_calls_are_found_with_the_instruction_after_them() {
        // call +0x10; call [rax] (indirect, left out); ret
        let code = [0xe8, 0x10, 0x00, 0x00, 0x00, 0xff, 0x10, 0xc3];
        let s = sites(&code, BASE, never).unwrap();
        assert_eq!(s.calls, vec![(BASE + 5 + 0x10, BASE + 5)]);
        assert_eq!(s.returns, vec![BASE + 7]);
    }

    #[test]
    fn a_compare_not_followed_by_a_jump_is_no_prologue() {
        // cmp rsp,[r14+0x10]; nop; jbe; ret
        let code = [0x49, 0x3b, 0x66, 0x10, 0x90, 0x76, 0x00, 0xc3];
        assert_eq!(sites(&code, BASE, never).unwrap().entry, BASE);
    }

    #[test]
    fn garbage_decodes_without_panicking() {
        let code: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let _ = sites(&code, BASE, never);
        let _ = sites(&[], BASE, never);
        let _ = sites(&[0x0f], BASE, never);
    }
}
