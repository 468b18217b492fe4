//! `mysocket-jepsen`: the fault-injection suite. Not built yet: see the project's issues.

fn main() {
    eprintln!("mysocket-jepsen: the fault-injection suite is not implemented yet");
    std::process::exit(2);
}
