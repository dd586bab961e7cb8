//! The CSV sink: the database's columns, decimals as their text, gzip by the file's name.

use std::fs::File;
use std::io::{BufWriter, Write};

use super::rows::{Col, FileSink, Sink, Val};

/// Where CSV goes: the file, or a gzip stream over it (`.gz`), ended and synced at the end.
pub(super) trait Finish: Write {
    fn finish(self) -> std::io::Result<()>;
}

impl Finish for BufWriter<File> {
    fn finish(mut self) -> std::io::Result<()> {
        self.flush()?;
        self.get_ref().sync_all()
    }
}

impl Finish for flate2::write::GzEncoder<BufWriter<File>> {
    fn finish(self) -> std::io::Result<()> {
        // the gzip trailer (CRC, length) is written here, not on drop, so its errors count
        let inner = flate2::write::GzEncoder::finish(self)?;
        Finish::finish(inner)
    }
}

pub(super) struct CsvSink<W: Finish>(csv::Writer<W>);

impl<W: Finish> CsvSink<W> {
    pub(super) fn new(w: W, cols: &[Col]) -> anyhow::Result<CsvSink<W>> {
        let mut w = csv::Writer::from_writer(w);
        w.write_record(cols.iter().map(|c| c.name.as_str()))?;
        Ok(CsvSink(w))
    }
}

impl<W: Finish> Sink for CsvSink<W> {
    fn write(&mut self, rows: Vec<Vec<Val>>) -> anyhow::Result<()> {
        for row in rows {
            self.0.write_record(row.iter().map(|v| match v {
                Val::Null => String::new(),
                Val::Int(i) => i.to_string(),
                Val::Bool(b) => b.to_string(),
                Val::Text(t) => t.clone(),
                Val::Dec(d) => d.to_string(),
                Val::Levels(l) => crate::store::levels_to_json(l),
            }))?;
        }
        Ok(())
    }
}

impl<W: Finish> FileSink for CsvSink<W> {
    fn finish(self: Box<Self>) -> anyhow::Result<()> {
        let inner = self.0.into_inner().map_err(|e| e.into_error())?;
        Finish::finish(inner)?;
        Ok(())
    }
}
