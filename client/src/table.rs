//! Plain ASCII tables, like the original client's.

pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<const N: usize>(header: [&str; N]) -> Table {
        Table { header: header.iter().map(|s| s.to_string()).collect(), rows: Vec::new() }
    }

    pub fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.rows.push(cells.to_vec());
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = {
            let parts: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
            format!("+{}+\n", parts.join("+"))
        };
        let fmt_row = |cells: &[String]| {
            let parts: Vec<String> =
                cells.iter().zip(&widths).map(|(c, w)| format!(" {c}{} ", " ".repeat(w - c.chars().count()))).collect();
            format!("|{}|\n", parts.join("|"))
        };
        let mut out = String::new();
        out.push_str(&line);
        out.push_str(&fmt_row(&self.header));
        out.push_str(&line);
        for r in &self.rows {
            out.push_str(&fmt_row(r));
        }
        out.push_str(&line);
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn aligns_columns() {
        let mut t = super::Table::new(["A", "LONGER"]);
        t.row(["wide cell".to_string(), "x".to_string()]);
        let s = t.render();
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines.iter().all(|l| l.chars().count() == lines[0].chars().count()));
        assert!(s.contains("| wide cell | x      |"));
    }
}
