use anyhow::Result;
use clap::{Parser, Subcommand};
use truncwatch::agent::{check, descriptors, run};
use truncwatch::lab;

/// Flags HTTP/1 responses cut short on this host (short writes, resets that drop data), from
/// the kernel, without touching the applications.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: run::RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Watch this host (the default).
    Run(run::RunArgs),
    /// Check that the detector works on this host: make one short write and one reset
    /// discard on loopback and check both are flagged with the right byte counts. Exit status
    /// 0 if so.
    Selftest(run::RunArgs),
    /// What this kernel offers (BTF, tracepoints, fentry, kprobes, ring buffer, BPF stats),
    /// which hook backend would run, and what a missing feature costs. Exit status 0 if a
    /// backend runs here.
    Check,
    /// Reproduce truncations: a test server and a slow client.
    #[command(subcommand)]
    Lab(LabCmd),
}

#[derive(Subcommand)]
enum LabCmd {
    /// An HTTP/1 server that can end responses early.
    Serve(Box<lab::ServeArgs>),
    /// A client that reads slowly and prints what it received.
    Fetch(Box<lab::FetchArgs>),
    /// One HTTPS exchange through the system's libssl.so.3, cut short or whole, and what the
    /// client received.
    Tls(Box<lab::TlsArgs>),
    /// One HTTP/1 exchange over kernel TLS (kTLS, the kernel's `tls` module), cut short or
    /// whole, and what the client received.
    Ktls(Box<lab::KtlsArgs>),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        None => run(cli.run),
        Some(Cmd::Run(a)) => run(a),
        // No endpoint: a selftest must work next to a running agent.
        Some(Cmd::Selftest(a)) => run(run::RunArgs {
            selftest: true,
            metrics_addr: "off".into(),
            ..a
        }),
        Some(Cmd::Check) => {
            let (text, runs) = check::report(&check::probe());
            print!("{text}");
            std::process::exit(if runs { 0 } else { 1 });
        }
        Some(Cmd::Lab(LabCmd::Serve(a))) => lab::serve(&a),
        Some(Cmd::Lab(LabCmd::Fetch(a))) => lab::fetch(&a),
        Some(Cmd::Lab(LabCmd::Tls(a))) => lab::tls(&a),
        Some(Cmd::Lab(LabCmd::Ktls(a))) => lab::ktls(&a),
    }
}

fn run(args: run::RunArgs) -> Result<()> {
    descriptors::raise_and_report();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let done = rt.block_on(run::run(args));
    // Blocking work still under way (tokio's blocking pool) must not hold up the exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    done
}
