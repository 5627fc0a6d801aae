//! A line diff of two versions of a DAG file, shown as unified hunks on the Versions tab.
//!
//! Common lines at both ends are set aside first (most edits touch a few lines), then the
//! middle is matched by longest common subsequence. A middle too big for the table (both
//! sides over ~2,000 changed lines) is shown as replaced whole rather than costing the server
//! hundreds of megabytes.

/// Largest LCS table (cells) the diff builds.
const MAX_CELLS: usize = 4_000_000;
/// Unchanged lines kept around each change.
const CONTEXT: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Same,
    Removed,
    Added,
}

/// One line of the diff with its number in the old and new file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffLine {
    pub change: Change,
    pub old_no: Option<usize>,
    pub new_no: Option<usize>,
    pub text: String,
}

impl DiffLine {
    /// The CSS class and the sign the template shows.
    pub fn class(&self) -> &'static str {
        match self.change {
            Change::Same => "same",
            Change::Removed => "del",
            Change::Added => "add",
        }
    }

    pub fn sign(&self) -> &'static str {
        match self.change {
            Change::Same => " ",
            Change::Removed => "-",
            Change::Added => "+",
        }
    }
}

/// A hunk: a run of changes with up to [`CONTEXT`] unchanged lines around it.
pub struct Hunk {
    /// `@@ -3,7 +3,8 @@`.
    pub header: String,
    pub lines: Vec<DiffLine>,
}

/// Every line of `new` against `old`, in order.
pub fn diff_lines(old: &str, new: &str) -> Vec<DiffLine> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (mid_a, mid_b) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let same = |i: usize, j: usize, text: &str| DiffLine {
        change: Change::Same,
        old_no: Some(i + 1),
        new_no: Some(j + 1),
        text: text.to_owned(),
    };
    for (i, line) in a[..prefix].iter().enumerate() {
        out.push(same(i, i, line));
    }
    for (change, i, j) in middle(mid_a, mid_b) {
        let (i, j) = (i + prefix, j + prefix);
        out.push(match change {
            Change::Same => same(i, j, a[i]),
            Change::Removed => DiffLine {
                change,
                old_no: Some(i + 1),
                new_no: None,
                text: a[i].to_owned(),
            },
            Change::Added => DiffLine {
                change,
                old_no: None,
                new_no: Some(j + 1),
                text: b[j].to_owned(),
            },
        });
    }
    for k in 0..suffix {
        let (i, j) = (a.len() - suffix + k, b.len() - suffix + k);
        out.push(same(i, j, a[i]));
    }
    out
}

/// The middle's edit script: `(change, index in a, index in b)` (the index of the side the
/// line comes from; the other is where it would be).
fn middle(a: &[&str], b: &[&str]) -> Vec<(Change, usize, usize)> {
    let (n, m) = (a.len(), b.len());
    if n.saturating_mul(m) > MAX_CELLS {
        let removed = (0..n).map(|i| (Change::Removed, i, 0));
        let added = (0..m).map(|j| (Change::Added, n, j));
        return removed.chain(added).collect();
    }
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let width = m + 1;
    let mut lcs = vec![0u32; (n + 1) * width];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i * width + j] = if a[i] == b[j] {
                lcs[(i + 1) * width + j + 1] + 1
            } else {
                lcs[(i + 1) * width + j].max(lcs[i * width + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(n + m);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push((Change::Same, i, j));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[(i + 1) * width + j] >= lcs[i * width + j + 1]) {
            // Removals before additions, as unified diffs show a replaced line.
            out.push((Change::Removed, i, j));
            i += 1;
        } else {
            out.push((Change::Added, i, j));
            j += 1;
        }
    }
    out
}

/// The changes of `new` against `old` as unified hunks; empty when the files are the same.
pub fn hunks(old: &str, new: &str) -> Vec<Hunk> {
    let lines = diff_lines(old, new);
    let changed: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.change != Change::Same)
        .map(|(k, _)| k)
        .collect();
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for k in changed {
        let (from, to) = (
            k.saturating_sub(CONTEXT),
            (k + CONTEXT + 1).min(lines.len()),
        );
        match ranges.last_mut() {
            Some(last) if from <= last.1 => last.1 = to,
            _ => ranges.push((from, to)),
        }
    }
    ranges
        .into_iter()
        .map(|(from, to)| {
            let part = lines[from..to].to_vec();
            let start = |pick: fn(&DiffLine) -> Option<usize>| {
                part.iter().find_map(pick).unwrap_or_else(|| {
                    // A side with no line in the hunk: the line before it.
                    lines[..from].iter().rev().find_map(pick).unwrap_or(0)
                })
            };
            let old_count = part.iter().filter(|l| l.old_no.is_some()).count();
            let new_count = part.iter().filter(|l| l.new_no.is_some()).count();
            Hunk {
                header: format!(
                    "@@ -{},{old_count} +{},{new_count} @@",
                    start(|l| l.old_no),
                    start(|l| l.new_no)
                ),
                lines: part,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(hunks: &[Hunk]) -> String {
        let mut out = String::new();
        for h in hunks {
            out.push_str(&h.header);
            out.push('\n');
            for l in &h.lines {
                out.push_str(l.sign());
                out.push_str(&l.text);
                out.push('\n');
            }
        }
        out
    }

    #[test]
    fn same_files_have_no_hunks() {
        assert!(hunks("a\nb\n", "a\nb\n").is_empty());
        assert!(hunks("", "").is_empty());
    }

    #[test]
    fn a_changed_line_in_a_long_file_is_one_hunk_with_context() {
        let old: String = (1..=20).map(|i| format!("line {i}\n")).collect();
        let new = old.replace("line 10\n", "line ten\n");
        let h = hunks(&old, &new);
        assert_eq!(h.len(), 1);
        assert_eq!(
            render(&h),
            "@@ -7,7 +7,7 @@\n line 7\n line 8\n line 9\n-line 10\n+line ten\n line 11\n line 12\n line 13\n"
        );
    }

    #[test]
    fn inserts_and_deletes_are_matched_around_moved_context() {
        let old = "a\nb\nc\nd\ne\n";
        let new = "a\nc\nd\nx\ne\n";
        let lines = diff_lines(old, new);
        let script: Vec<String> = lines
            .iter()
            .map(|l| format!("{}{}", l.sign(), l.text))
            .collect();
        assert_eq!(script, [" a", "-b", " c", " d", "+x", " e"]);
        // Line numbers follow each side.
        let x = lines.iter().find(|l| l.text == "x").unwrap();
        assert_eq!((x.old_no, x.new_no), (None, Some(4)));
        let b = lines.iter().find(|l| l.text == "b").unwrap();
        assert_eq!((b.old_no, b.new_no), (Some(2), None));
    }

    #[test]
    fn far_apart_changes_are_separate_hunks_and_a_new_file_is_all_added() {
        let old: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let new = old
            .replace("line 2\n", "line two\n")
            .replace("line 28\n", "line twenty-eight\n");
        assert_eq!(hunks(&old, &new).len(), 2);
        let h = hunks("", "a\nb\n");
        assert_eq!(render(&h), "@@ -0,0 +1,2 @@\n+a\n+b\n");
    }

    #[test]
    fn a_huge_rewrite_is_shown_replaced_without_a_huge_table() {
        let old: String = (0..3000).map(|i| format!("old {i}\n")).collect();
        let new: String = (0..3000).map(|i| format!("new {i}\n")).collect();
        let lines = diff_lines(&old, &new);
        assert_eq!(lines.len(), 6000);
        assert!(lines[..3000].iter().all(|l| l.change == Change::Removed));
        assert!(lines[3000..].iter().all(|l| l.change == Change::Added));
    }
}
