//! `gatewarden-vision`: the child process that owns the cameras, OpenCV and
//! ONNX Runtime. Started and supervised by `gatewarden run`; not for people.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.iter().position(|a| a == "--config").and_then(|i| args.get(i + 1)) else {
        eprintln!("usage: gatewarden-vision --config FILE (started by `gatewarden run`)\n       gatewarden-vision --config FILE --check [--photo FILE]   (verify models, runtime and OpenCV after an install)");
        return std::process::ExitCode::from(2);
    };
    let cfg = match config::Config::load(std::path::Path::new(path)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    gatewarden_vision::init_logging(&cfg.log);
    if args.iter().any(|a| a == "--check") {
        let photo = args.iter().position(|a| a == "--photo").and_then(|i| args.get(i + 1)).map(std::path::PathBuf::from);
        return match gatewarden_vision::worker::check(&cfg, photo.as_deref()) {
            Ok(report) => {
                println!("{report}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::from(1)
            }
        };
    }
    match gatewarden_vision::worker::run(&cfg) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
