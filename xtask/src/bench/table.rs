//! Plain-text tables: readable in a terminal and in a CI log alike, no dependency needed.

pub fn cells<const N: usize>(header: [&str; N]) -> Vec<String> {
    header.iter().map(|s| s.to_string()).collect()
}

/// Left-aligned text in columns two spaces apart.
pub fn print_table(table: &[Vec<String>]) {
    let columns = table.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            table
                .iter()
                .filter_map(|row| row.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in table {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}
