//! The README's "Getting started", done as a new user would: `cargo new`, the dependency lines,
//! `src/main.rs` and `src/tally.rs` exactly as printed (the dependency on this checkout by path,
//! as the README says for a checkout), built, served, and every command of its transcripts run
//! with its output compared to what the README shows.

use std::path::{Path, PathBuf};
use std::process::Command;

use denizen_test_util::child::ChildServer;

/// The address the README's transcripts use; the test's server listens on port 0.
const README_ADDR: &str = "127.0.0.1:8787";

struct Block {
    lang: String,
    text: String,
}

/// The fenced blocks of the README section titled `title`, in order.
fn blocks(readme: &str, title: &str) -> Vec<Block> {
    let start = readme
        .find(&format!("\n{title}\n"))
        .unwrap_or_else(|| panic!("the README has no `{title}` section"));
    let section = &readme[start + title.len() + 2..];
    let section = section.find("\n## ").map_or(section, |end| &section[..end]);
    let mut out = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if let Some(lang) = line.strip_prefix("```") {
            let mut text = String::new();
            for line in lines.by_ref() {
                if line == "```" {
                    break;
                }
                text.push_str(line);
                text.push('\n');
            }
            out.push(Block {
                lang: lang.to_string(),
                text,
            });
        }
    }
    out
}

/// A command line split as a shell would (double quotes group words).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            ' ' if !quoted => {
                if started {
                    out.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(word);
    }
    out
}

/// The commands of a console block (`$ ...`) with the output printed after each.
fn transcript(block: &Block) -> Vec<(Vec<String>, String)> {
    assert_eq!(block.lang, "console");
    let mut out: Vec<(Vec<String>, String)> = Vec::new();
    for line in block.text.lines() {
        match line.strip_prefix("$ ") {
            Some(cmd) => out.push((words(cmd), String::new())),
            None => {
                let (_, expected) = out.last_mut().expect("a transcript starts with a command");
                expected.push_str(line);
                expected.push('\n');
            }
        }
    }
    out
}

struct App {
    dir: PathBuf,
    bin: PathBuf,
}

impl App {
    fn cargo(&self, args: &[&str]) {
        // This checkout's target directory and debug settings (its [profile.dev]), so the
        // build reuses what the suite's build compiled instead of compiling the tree again.
        let profile = crate::support::profile_dir();
        let release = profile.ends_with("release").then_some("--release");
        let status = Command::new(env!("CARGO"))
            .args(args)
            .args(release)
            .args([
                "--config",
                "profile.dev.debug=\"line-tables-only\"",
                "--config",
                "profile.dev.package.\"*\".debug=false",
            ])
            .current_dir(&self.dir)
            .env("CARGO_TARGET_DIR", profile.parent().unwrap())
            .status()
            .unwrap();
        assert!(status.success(), "cargo {args:?} failed in the new crate");
    }

    /// `cargo run -- serve` as the README has it, on port 0 (the address in the README's
    /// transcripts is replaced by the real one).
    fn serve(&self, expected: &str) -> ChildServer {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .current_dir(&self.dir)
            .env("DENIZEN_LISTEN", "127.0.0.1:0")
            .env("DENIZEN_CONFIG", self.dir.join("denizen.toml"));
        let server = ChildServer::spawn(cmd);
        assert_eq!(
            expected.replace(README_ADDR, &server.addr),
            format!("hello listening on http://{}\n", server.addr)
        );
        server
    }

    /// One command of a transcript against `server`, checked against its printed output.
    async fn check(&self, server: &ChildServer, cmd: &[String], expected: &str) {
        let expected = expected.replace(README_ADDR, &server.addr);
        let actual = match cmd
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["curl", rest @ ..] => {
                let (method, url) = match rest {
                    ["-X", method, url] => (*method, *url),
                    [url] => ("GET", *url),
                    other => panic!("a curl the test does not know: {other:?}"),
                };
                let url = url.replace("localhost:8787", &server.addr);
                let resp = reqwest::Client::new()
                    .request(method.parse().unwrap(), format!("http://{url}"))
                    .send()
                    .await
                    .unwrap();
                format!("{}\n", resp.text().await.unwrap())
            }
            ["cargo", "run", "-q", "--", args @ ..] => {
                let out = Command::new(&self.bin)
                    .args(args)
                    .current_dir(&self.dir)
                    .env("DENIZEN_CONFIG", self.dir.join("denizen.toml"))
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{cmd:?}: {out:?}");
                // Rows on stdout, then the counts on stderr, as a terminal shows them.
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            }
            ["node", script] => {
                let out = Command::new("node")
                    .arg(script)
                    .current_dir(&self.dir)
                    .output()
                    .expect("node must be installed (Node 20 or newer) to run the JS client tests");
                assert!(out.status.success(), "{cmd:?}: {out:?}");
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
            other => panic!("a command the test does not know: {other:?}"),
        };
        assert_eq!(actual, expected, "the output of `{}`", cmd.join(" "));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_getting_started_section_builds_and_runs_as_printed() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let blocks = blocks(&readme, "## Getting started");
    let langs: Vec<&str> = blocks.iter().map(|b| b.lang.as_str()).collect();
    assert_eq!(
        langs,
        [
            "sh", "toml", "rust", "console", "console", "rust", "rust", "js", "console"
        ],
        "the Getting started section changed shape: update this test with it"
    );
    let [
        new,
        deps,
        main,
        serve,
        session,
        tally,
        register,
        client,
        node,
    ] = &blocks[..]
    else {
        unreachable!()
    };

    // `cargo new hello`, `cd hello`.
    let tmp = tempfile::tempdir().unwrap();
    let mut dir = tmp.path().to_path_buf();
    for line in new.text.lines() {
        match words(line).as_slice() {
            [cargo, rest @ ..] if cargo == "cargo" => {
                let status = Command::new(env!("CARGO"))
                    .args(rest)
                    .current_dir(&dir)
                    .status()
                    .unwrap();
                assert!(status.success(), "{line}");
            }
            [cd, to] if cd == "cd" => dir = dir.join(to),
            other => panic!("a command the test does not know: {other:?}"),
        }
    }
    // The dependency lines, on this checkout by path (the README's other way).
    let git = "{ git = \"https://github.com/denizen-rs/denizen\" }";
    assert!(deps.text.contains(git), "{}", deps.text);
    let deps = deps.text.replace(
        git,
        &format!("{{ path = {:?} }}", repo.display().to_string()),
    );
    let manifest = dir.join("Cargo.toml");
    let mut toml = std::fs::read_to_string(&manifest).unwrap();
    assert!(toml.trim_end().ends_with("[dependencies]"), "{toml}");
    toml.push_str(&deps);
    std::fs::write(&manifest, toml).unwrap();
    // The versions this checkout is tested with (and has downloaded).
    std::fs::copy(repo.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    std::fs::write(dir.join("src/main.rs"), &main.text).unwrap();

    let app = App {
        dir: dir.clone(),
        bin: crate::support::profile_dir().join("hello"),
    };
    app.cargo(&["build"]);

    // Serve, then the session from another terminal.
    let [(serve_cmd, serve_out)] = &transcript(serve)[..] else {
        panic!("one command to serve")
    };
    assert_eq!(serve_cmd, &["cargo", "run", "--", "serve"]);
    let mut server = app.serve(serve_out);
    for (cmd, expected) in transcript(session) {
        app.check(&server, &cmd, &expected).await;
    }
    let objects = Command::new(&app.bin)
        .args(["objects", "counter"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&objects.stdout);
    assert!(listed.lines().any(|l| l.starts_with("ada ")), "{listed}");
    // `grace` was only read: an object exists once something is written to it.
    assert!(!listed.contains("grace"), "{listed}");
    server.stop();

    // The agent: its file, `fn main` replaced, rebuilt and served again.
    std::fs::write(dir.join("src/tally.rs"), &tally.text).unwrap();
    let head = main.text.split("fn main()").next().unwrap();
    std::fs::write(dir.join("src/main.rs"), format!("{head}{}", register.text)).unwrap();
    app.cargo(&["build"]);
    let server = app.serve(serve_out);
    let script = client.text.replace(README_ADDR, &server.addr);
    std::fs::write(dir.join("client.mjs"), script).unwrap();
    // `npm install agents@0.32.0 ws@8`: the suite's pinned copy.
    std::os::unix::fs::symlink(repo.join("tests/js/node_modules"), dir.join("node_modules"))
        .unwrap();
    for (cmd, expected) in transcript(node) {
        app.check(&server, &cmd, &expected).await;
    }
    // The counter is still there, with its count.
    let resp = reqwest::get(server.url("/objects/counter/ada"))
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "{\"count\":2}");
}
