//! AFP post-training quantization: calibration ([`calib`]), objectives and per-layer search
//! ([`search`]), weight handling and baselines ([`weights`]), plans ([`plan`]), and turning
//! statistics into a plan and a plan into a simulated graph ([`quantize`]); the energy per
//! inference of a plan against FP32 and INT8 dynamic quantization ([`energy`]); the `.afp` file
//! ([`afpfile`]); GPTQ rounding ([`gptq`]); the packed integer engine ([`packed`]); export to standard ONNX ([`export`]).

pub mod actcal;
pub mod afpfile;
pub mod bayes;
pub mod calib;
pub mod energy;
pub mod export;
pub mod gptq;
pub mod knapsack;
pub mod packed;
pub mod plan;
pub mod quantize;
pub mod search;
pub mod sensitivity;
pub mod weights;

pub use plan::{Plan, QuantizedModel};
pub use quantize::{
    apply, plan_layers, plan_layers_probed, quantizable_layers, totals, ActMode, ActObjective,
    Allocation, PlanDiagnostics, ProbeImages, QuantizeOptions,
};
pub use search::{Family, Objective, SearchOptions, Strategy};
