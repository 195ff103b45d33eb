//! `afpq`: the command-line tool. Thin: every command is a call into the libraries.

mod bench;
mod common;
mod demo;
mod energy;
mod engine_run;
mod eval;
mod export;
mod inspect;
mod levels;
mod quantize;
mod report;
mod run;
mod sweep;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "afpq",
    version,
    about = "Post-training quantization with Adaptive Floating-Point (AFP) numbers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The bundled ResNet-8: quantize, evaluate, speed, energy, report, in one table.
    Demo(demo::Args),
    /// Print every value of a number format in increasing order.
    Levels(levels::Args),
    /// Show a model: inputs, outputs, operators, parameters and MACs per layer, weight statistics.
    Inspect(inspect::Args),
    /// Top-1/top-5 accuracy of a model on a labelled image folder.
    Eval(eval::Args),
    /// Classify images: the top-5 classes of each.
    Run(run::Args),
    /// Images per second, after warm-up, for several batch sizes and thread counts.
    Bench(bench::Args),
    /// Quantize a model's weights (and layer inputs) to AFP: calibration, per-layer search, a plan.
    Quantize(Box<quantize::Args>),
    /// Accuracy and size for each format family and bit-width (CSV and JSON, and printed).
    Sweep(Box<sweep::Args>),
    /// Energy per inference of a plan against FP32 and INT8 dynamic quantization (pJ).
    Energy(energy::Args),
    /// Export a .afp model to standard ONNX: decoded f32 weights, or QuantizeLinear/DequantizeLinear.
    Export(export::Args),
    /// An HTML page about a .afp model: size, bits per layer, weight histograms, accuracy
    /// against size, energy, per-layer table.
    Report(report::Args),
}

/// Output piped into a reader that stops early (`afpq inspect M | head`) ends the process
/// quietly, as for any Unix tool, instead of panicking in `println!` on EPIPE.
#[cfg(unix)]
fn default_sigpipe() {
    // SAFETY: `signal` with `SIG_DFL` only resets this signal's disposition; it runs first
    // thing in `main`, before any other thread exists, and installs no handler code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    #[cfg(unix)]
    default_sigpipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Levels(args) => levels::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Quantize(args) => quantize::run(&args),
        Command::Sweep(args) => sweep::run(&args),
        Command::Energy(args) => energy::run(&args),
        Command::Export(args) => export::run(&args),
        Command::Report(args) => report::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
