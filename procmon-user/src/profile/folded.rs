//! Folded stacks (`root;caller;leaf COUNT`, one stack a line: what Brendan Gregg's
//! `flamegraph.pl`, inferno, speedscope and friends read) and flame graph SVGs.
//!
//! ## Frames are made safe for the format
//! A line is split at its LAST space to find the count, and at `;` into frames, so
//! [`sanitize_frame`] rewrites what would be misread:
//! - `;` becomes `:` (C++ and Rust names such as `[u8; 8]` contain it);
//! - control characters (newline, CR, tab, …) become a space, and U+FFFE/U+FFFF (not
//!   allowed in XML, so they would break the SVG) become U+FFFD;
//! - leading and trailing whitespace is trimmed (readers trim each line, so a leaf's
//!   trailing space would not survive), and an empty frame becomes `[unknown]`;
//! - a frame whose last space-separated word looks like a count (`foo 42`, `bar 1.5`) gets
//!   that last space turned into a no-break space (U+00A0). Otherwise, as a leaf, the line
//!   `a;foo 42 7` is read by inferno as a *differential* line (counts 42 and 7) with the
//!   frame `foo`. The rule applies to every frame, not only leaves, so one function is one
//!   frame wherever it sits; it looks the same on screen;
//! - a frame starting `# ` gets the same no-break space, since a line starting `# ` is a
//!   comment to inferno.
//!
//! Frames are `Arc<str>`, so invalid UTF-8 cannot occur.

use std::collections::BTreeMap;

use anyhow::Context;

use super::symbolize::Frame;

/// One stack and how many samples had it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stack {
    /// Root first, leaf last.
    pub frames: Vec<Frame>,
    pub count: u64,
}

/// Only the tests read folded text back; users' tools read it.
#[cfg(test)]
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FoldedError {
    #[error("folded line {line}: no sample count (a space and a whole number ending the line)")]
    MissingCount { line: usize },
    #[error("folded line {line}: {count:?} is not a whole number of samples")]
    BadCount { line: usize, count: String },
    #[error("folded line {line}: frame {index} is empty")]
    EmptyFrame { line: usize, index: usize },
    #[error(
        "folded line {line}: frame {frame:?} ends in a number after a space, which readers \
         take for a second (differential) count"
    )]
    AmbiguousFrame { line: usize, frame: String },
}

const UNKNOWN: &str = "[unknown]";
const NBSP: char = '\u{a0}';

/// Renders stacks as folded text: one line per distinct (sanitized) stack, counts of equal
/// stacks summed, lines sorted by their frames. Stacks totalling 0 samples are left out.
pub fn folded(stacks: &[Stack]) -> String {
    let mut merged: BTreeMap<Vec<String>, u64> = BTreeMap::new();
    for stack in stacks {
        let mut frames: Vec<String> = stack.frames.iter().map(|f| sanitize_frame(f)).collect();
        if frames.is_empty() {
            frames.push(UNKNOWN.to_owned());
        }
        let total = merged.entry(frames).or_insert(0);
        *total = total.saturating_add(stack.count);
    }
    let mut out = String::new();
    for (frames, count) in merged {
        if count == 0 {
            continue;
        }
        for (i, frame) in frames.iter().enumerate() {
            if i > 0 {
                out.push(';');
            }
            out.push_str(frame);
        }
        out.push(' ');
        out.push_str(&count.to_string());
        out.push('\n');
    }
    out
}

/// Makes one frame safe for the folded format and XML; see the module doc.
pub fn sanitize_frame(frame: &str) -> String {
    let cleaned: String = frame
        .chars()
        .map(|c| match c {
            ';' => ':',
            c if c.is_control() => ' ',
            '\u{fffe}' | '\u{ffff}' => '\u{fffd}',
            c => c,
        })
        .collect();
    let trimmed = cleaned.trim();
    if trimmed.is_empty() {
        return UNKNOWN.to_owned();
    }
    let mut s = trimmed.to_owned();
    if let Some(space) = s.rfind(' ') {
        if looks_like_count(&s[space + 1..]) {
            s.replace_range(space..space + 1, NBSP.encode_utf8(&mut [0; 4]));
        }
    }
    if s.starts_with("# ") {
        s.replace_range(1..2, NBSP.encode_utf8(&mut [0; 4]));
    }
    s
}

/// What inferno accepts as a sample count: digits, optionally one `.` (either side may be
/// empty, so `.` alone counts too).
fn looks_like_count(word: &str) -> bool {
    let mut dots = 0;
    for c in word.chars() {
        match c {
            '.' => dots += 1,
            c if c.is_ascii_digit() => {}
            _ => return false,
        }
    }
    dots <= 1
}

/// Reads folded text back. Blank lines are skipped; anything [`folded`] would not write is
/// an error naming its line (1-based).
#[cfg(test)]
pub fn parse_folded(text: &str) -> Result<Vec<Stack>, FoldedError> {
    let mut stacks = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let (stack, count) = raw
            .rsplit_once(' ')
            .ok_or(FoldedError::MissingCount { line })?;
        let count = count.parse::<u64>().map_err(|_| FoldedError::BadCount {
            line,
            count: count.to_owned(),
        })?;
        let mut frames = Vec::new();
        for (index, frame) in stack.split(';').enumerate() {
            if frame.trim().is_empty() {
                return Err(FoldedError::EmptyFrame { line, index });
            }
            if frame
                .rsplit_once(' ')
                .is_some_and(|(_, last)| looks_like_count(last))
            {
                return Err(FoldedError::AmbiguousFrame {
                    line,
                    frame: frame.to_owned(),
                });
            }
            frames.push(Frame::from(frame));
        }
        stacks.push(Stack { frames, count });
    }
    Ok(stacks)
}

/// Draws a flame graph (inferno's, with its search and zoom script) titled `title`.
/// Fails when there is nothing to draw (no stack with a sample).
pub fn svg(stacks: &[Stack], title: &str) -> anyhow::Result<Vec<u8>> {
    let text = folded(stacks);
    if text.is_empty() {
        anyhow::bail!("no samples to draw a flame graph from");
    }
    let mut opts = inferno::flamegraph::Options::default();
    // inferno escapes `<`, `&` and quotes in text; what XML cannot hold at all (control
    // characters) it passes through, so the title goes through the frames' cleaning too.
    opts.title = title
        .chars()
        .map(|c| match c {
            c if c.is_control() => ' ',
            '\u{fffe}' | '\u{ffff}' => '\u{fffd}',
            c => c,
        })
        .collect();
    opts.count_name = "samples".to_owned();
    // Colour by name rather than at random: the same function keeps its colour across
    // graphs, and the output is reproducible.
    opts.hash = true;
    opts.deterministic = true;
    let mut out = Vec::new();
    inferno::flamegraph::from_lines(&mut opts, text.lines(), &mut out)
        .context("inferno could not draw the flame graph")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(frames: &[&str], count: u64) -> Stack {
        Stack {
            frames: frames.iter().map(|f| Frame::from(*f)).collect(),
            count,
        }
    }

    #[test]
    fn merges_equal_stacks_and_sorts_by_frames() {
        let text = folded(&[
            stack(&["main", "b"], 2),
            stack(&["main", "a", "leaf"], 1),
            stack(&["main", "b"], 3),
            stack(&["idle"], 0),
            stack(&["main", "a"], 4),
        ]);
        assert_eq!(text, "main;a 4\nmain;a;leaf 1\nmain;b 5\n");
    }

    #[test]
    fn round_trips_through_the_parser() {
        let stacks = vec![
            stack(
                &["main", "std::rt::lang_start", "hot_outer", "hot_inner"],
                812,
            ),
            stack(
                &["main", "operator new(unsigned long, std::nothrow_t const&)"],
                3,
            ),
            stack(&["[unknown 0x7f00]", "libc.so.6+0x1234"], 1),
        ];
        let parsed = parse_folded(&folded(&stacks)).expect("our own output parses");
        let mut expected = stacks;
        expected.sort_by(|a, b| a.frames.cmp(&b.frames));
        assert_eq!(parsed, expected);
    }

    #[test]
    fn hostile_frames_are_rewritten_so_the_line_still_parses() {
        let text = folded(&[stack(
            &[
                "<&\"'>",
                "semi;colon [u8; 8]",
                "new\nline\r\ttab\u{1b}esc",
                "  padded  ",
                "",
                "# looks like a comment",
                "retry 42",
                "ratio 1.5",
                "dots .",
                "v8 is fine",
                "\u{fffe}",
            ],
            7,
        )]);
        assert_eq!(text.lines().count(), 1, "one line: {text:?}");
        let parsed = parse_folded(&text).expect("parses");
        let frames: Vec<&str> = parsed[0].frames.iter().map(|f| &**f).collect();
        assert_eq!(
            frames,
            [
                "<&\"'>",
                "semi:colon [u8: 8]",
                "new line  tab esc",
                "padded",
                "[unknown]",
                "#\u{a0}looks like a comment",
                "retry\u{a0}42",
                "ratio\u{a0}1.5",
                "dots\u{a0}.",
                "v8 is fine",
                "\u{fffd}",
            ]
        );
        assert_eq!(parsed[0].count, 7);
    }

    /// The count is what inferno sees too: a leaf ending in a number after a space would
    /// otherwise become a differential count, and the graph's total would differ.
    #[test]
    fn a_leaf_ending_in_digits_keeps_its_samples_in_the_svg() {
        let bytes = svg(&[stack(&["main", "retry 42"], 7)], "t").expect("svg");
        let text = String::from_utf8(bytes).expect("utf-8");
        assert!(text.contains("all (7 samples, 100%)"), "total must be 7");
        assert!(text.contains("retry\u{a0}42 (7 samples, 100.00%)"));
    }

    #[test]
    fn malformed_lines_name_their_line() {
        assert_eq!(
            parse_folded("a;b 1\nno_count\n"),
            Err(FoldedError::MissingCount { line: 2 })
        );
        assert_eq!(
            parse_folded("\na;b x\n"),
            Err(FoldedError::BadCount {
                line: 2,
                count: "x".into()
            })
        );
        assert_eq!(
            parse_folded("a;;b 3"),
            Err(FoldedError::EmptyFrame { line: 1, index: 1 })
        );
        assert_eq!(
            parse_folded("a;b 4 5"),
            Err(FoldedError::AmbiguousFrame {
                line: 1,
                frame: "b 4".into()
            })
        );
        assert_eq!(
            parse_folded("a -1"),
            Err(FoldedError::BadCount {
                line: 1,
                count: "-1".into()
            })
        );
    }

    #[test]
    fn svg_is_well_formed_xml_with_hostile_title_and_frames() {
        let stacks = [
            stack(&["main", "hot_outer", "hot_inner"], 90),
            stack(
                &["main", "a<b>&c\"d'e", "ctl\u{1}\u{7f}\u{85}x", "\u{ffff}"],
                10,
            ),
        ];
        let title = "pid 42 \"<script>alert(1)</script>\" & more\u{0}\u{b}";
        let bytes = svg(&stacks, title).expect("svg");
        let text = std::str::from_utf8(&bytes).expect("utf-8");
        let doc = roxmltree::Document::parse_with_options(
            text,
            roxmltree::ParsingOptions {
                // inferno writes the SVG 1.1 DOCTYPE.
                allow_dtd: true,
                ..roxmltree::ParsingOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("not well-formed XML: {e}"));

        let titles: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("title"))
            .filter_map(|n| n.text())
            .collect();
        assert!(
            titles
                .iter()
                .any(|t| t.starts_with("hot_inner (90 samples, 90.00%)")),
            "{titles:?}"
        );
        assert!(titles
            .iter()
            .any(|t| t.starts_with("a<b>&c\"d'e (10 samples")));
        let heading = doc
            .descendants()
            .find(|n| n.attribute("id") == Some("title"))
            .and_then(|n| n.text())
            .expect("the title element");
        assert_eq!(heading, "pid 42 \"<script>alert(1)</script>\" & more  ");
    }

    #[test]
    fn svg_of_nothing_is_an_error() {
        let err = svg(&[stack(&["idle"], 0)], "t").unwrap_err();
        assert!(err.to_string().contains("no samples"), "{err}");
    }
}
