//! A check, on every `cargo test`, of the rule that kept procmon from loading on 5.10 and
//! 6.1: the CFG pass of older verifiers accepts a back edge only on a jump instruction, so a
//! loop that LLVM closes with a fall-through (e.g. after a helper call) is refused before a
//! single instruction is simulated ("back-edge from insn N to N+1"). 6.12 and later accept
//! it, so the host kernel cannot catch a regression; the QEMU matrix (`cargo xtask vm-test`)
//! does, in minutes, and this does in milliseconds.
//!
//! The rule checked is stricter and simpler: no program of the object has a cycle at all
//! (cgroup walks are unrolled, see procmon-ebpf/src/cgroup.rs `for_each_level!`). Calls to
//! subprograms count as falling through; those (`memcpy` and friends in `.text`) are
//! verified on their own.

use std::collections::HashMap;

use object::{Object, ObjectSection, SectionKind};

const BPF_JMP: u8 = 0x05;
const BPF_JMP32: u8 = 0x06;
const BPF_JA: u8 = 0x00;
const BPF_CALL: u8 = 0x80;
const BPF_EXIT: u8 = 0x90;
/// `lddw`: the one instruction that takes two 8-byte slots.
const BPF_LD_IMM64: u8 = 0x18;

/// Successors of each instruction slot of one program.
fn successors(code: &[u8]) -> HashMap<usize, Vec<usize>> {
    let slots = code.len() / 8;
    let mut out = HashMap::new();
    let mut t = 0;
    while t < slots {
        let insn = &code[t * 8..t * 8 + 8];
        let op = insn[0];
        let off = i16::from_le_bytes([insn[2], insn[3]]) as isize;
        let width = if op == BPF_LD_IMM64 { 2 } else { 1 };
        let next = t + width;
        let jump = (t as isize + off + 1) as usize;
        let class = op & 0x07;
        let succ = if class == BPF_JMP || class == BPF_JMP32 {
            match op & 0xf0 {
                BPF_EXIT => vec![],
                BPF_CALL => vec![next],
                BPF_JA => vec![jump],
                _ => vec![next, jump],
            }
        } else {
            vec![next]
        };
        out.insert(t, succ.into_iter().filter(|&s| s < slots).collect());
        t = next;
    }
    out
}

/// An edge that closes a cycle, if the program has one.
fn find_cycle(succ: &HashMap<usize, Vec<usize>>) -> Option<(usize, usize)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Color {
        OnStack,
        Done,
    }
    let mut color: HashMap<usize, Color> = HashMap::new();
    let mut stack = vec![(0usize, 0usize)];
    color.insert(0, Color::OnStack);
    while let Some(&mut (node, ref mut edge)) = stack.last_mut() {
        let edges = &succ[&node];
        if *edge == edges.len() {
            color.insert(node, Color::Done);
            stack.pop();
            continue;
        }
        let w = edges[*edge];
        *edge += 1;
        match color.get(&w) {
            Some(Color::OnStack) => return Some((node, w)),
            Some(Color::Done) => {}
            None => {
                color.insert(w, Color::OnStack);
                stack.push((w, 0));
            }
        }
    }
    None
}

#[test]
fn no_program_has_a_loop() {
    let bytes = std::fs::read(env!("PROCMON_EBPF_OBJECT")).expect("reading the eBPF object");
    let file = object::File::parse(&*bytes).expect("parsing the eBPF object");
    let mut programs = 0;
    for section in file.sections() {
        let name = section.name().unwrap_or_default();
        if section.kind() != SectionKind::Text || name == ".text" {
            continue;
        }
        programs += 1;
        let code = section.data().expect("section data");
        if let Some((from, to)) = find_cycle(&successors(code)) {
            panic!(
                "eBPF program {name} has a loop (insn {from} -> {to}): Linux 5.10/6.1 refuse \
                 loops closed by a fall-through; unroll it (see cgroup.rs for_each_level!)"
            );
        }
    }
    assert!(programs >= 8, "found only {programs} program sections");
}

#[test]
fn finds_a_loop_closed_by_a_fall_through() {
    // 0: r0 = 0; 1: goto +1 (into the loop's middle); 2: call 1; 3: if r0 > 5 goto -2 (to
    // 2); 4: exit. Entered at 3, the loop 3 -> 2 -> 3 is closed by the call's fall-through.
    let insn = |op: u8, off: i16| {
        let mut i = [0u8; 8];
        i[0] = op;
        i[2..4].copy_from_slice(&off.to_le_bytes());
        i
    };
    let code: Vec<u8> = [
        insn(0xb7, 0),
        insn(BPF_JMP | BPF_JA, 1),
        insn(BPF_JMP | BPF_CALL, 0),
        insn(BPF_JMP | 0x20, -2),
        insn(BPF_JMP | BPF_EXIT, 0),
    ]
    .concat();
    assert_eq!(find_cycle(&successors(&code)), Some((2, 3)));
    let straight: Vec<u8> = [
        insn(0xb7, 0),
        insn(BPF_JMP | 0x20, 1),
        insn(0xb7, 0),
        insn(BPF_JMP | BPF_EXIT, 0),
    ]
    .concat();
    assert_eq!(find_cycle(&successors(&straight)), None);
}
