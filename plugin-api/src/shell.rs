//! POSIX shell quoting, for transports that send a command line.

/// Quotes one word for a POSIX shell. Words made only of safe characters stay as they are.
pub fn quote(word: &str) -> String {
    let safe = !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%^".contains(&b));
    if safe {
        return word.to_string();
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('\'');
    for ch in word.chars() {
        if ch == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(ch);
        }
    }
    out.push('\'');
    out
}

/// Quotes and joins an argument vector into one command line.
pub fn join<S: AsRef<str>>(argv: &[S]) -> String {
    argv.iter().map(|a| quote(a.as_ref())).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn safe_words_are_left_alone() {
        assert_eq!(quote("docker"), "docker");
        assert_eq!(quote("/opt/cultivate"), "/opt/cultivate");
        assert_eq!(join(&["docker", "ps", "-a"]), "docker ps -a");
    }

    #[test]
    fn awkward_words_are_quoted() {
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("$HOME"), "'$HOME'");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Whatever the words, `sh` hands them back unchanged.
        #[test]
        fn quoting_round_trips_through_sh(words in proptest::collection::vec("[^\u{0}]{0,12}", 1..5)) {
            let script = format!("printf '%s\\0' {}", join(&words));
            let out = std::process::Command::new("sh").arg("-c").arg(&script).output().unwrap();
            prop_assert!(out.status.success());
            let got: Vec<String> = String::from_utf8(out.stdout).unwrap()
                .split('\0').map(str::to_string).collect();
            let mut expected = words.clone();
            expected.push(String::new());
            prop_assert_eq!(got, expected);
        }
    }
}
