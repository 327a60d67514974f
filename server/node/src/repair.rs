//! `meridian repair DATA_DIR`: reads a data dir's write-ahead log past any damage and rewrites
//! it from its intact records when that loses nothing (`meridian_crdt::repair_log`); with
//! `--accept-loss`, also when it does (`meridian_crdt::repair_log_accepting_loss`); with
//! `--check`, only says what it finds. Run it with the node stopped.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct RepairArgs {
    /// The data dir of a stopped node.
    pub data_dir: PathBuf,
    /// Only report; change nothing.
    #[arg(long, conflicts_with = "accept_loss")]
    pub check: bool,
    /// When batches are lost: keep the log up to the damage, hold the intact writes after it
    /// for their documents, and take no write until every peer has given back what it holds.
    #[arg(long)]
    pub accept_loss: bool,
}

impl RepairArgs {
    /// What was found (and done), for stdout; an error when the log cannot be repaired
    /// without losing acknowledged writes.
    pub fn run(&self) -> anyhow::Result<String> {
        anyhow::ensure!(
            self.data_dir.join("wal").is_dir(),
            "{} is not a data dir (it has no wal/)",
            self.data_dir.display()
        );
        let report = meridian_crdt::check_log(&self.data_dir)?;
        let mut out = describe(&report);
        if !report.lost.is_empty() && self.accept_loss {
            meridian_crdt::repair_log_accepting_loss(&self.data_dir)?;
            out.push_str(
                "repaired, accepting the loss: the log keeps the batches before the damage; the \
                 intact writes after it are held for their documents; the node takes no write \
                 until a complete anti-entropy pass with every peer has brought back what of the \
                 lost batches reached them\n",
            );
            return Ok(out);
        }
        if !report.lost.is_empty() {
            let mut err = out;
            err.push('\n');
            let refusal = meridian_crdt::repair_log(&self.data_dir)
                .expect_err("a report with lost batches is refused");
            err.push_str(&refusal.to_string());
            anyhow::bail!(err);
        }
        if self.check || !report.is_damaged() {
            return Ok(out);
        }
        meridian_crdt::repair_log(&self.data_dir)?;
        out.push_str("repaired: the log was rewritten from its intact records; nothing was lost\n");
        Ok(out)
    }
}

fn describe(r: &meridian_crdt::LogReport) -> String {
    let mut out = format!("sled holds every batch up to {}\n", r.applied);
    for s in &r.segments {
        out.push_str(&format!(
            "{}: {} intact records",
            s.path.display(),
            s.records
        ));
        for d in &s.damaged {
            out.push_str(&format!(", damaged bytes {}..{}", d.start, d.end));
        }
        out.push('\n');
    }
    if !r.is_damaged() {
        out.push_str("the log is intact\n");
    }
    for (collection, id, stamp) in &r.stranded {
        out.push_str(&format!(
            "lost on this node: {collection}/{id} changed at {stamp}\n"
        ));
    }
    out
}
