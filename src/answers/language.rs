//! Language consistency without a model: the share of a text's words written
//! in a given script (the DeepSeek-R1 paper's language-consistency reward
//! counts target-language words in the reasoning). A word is a run of
//! letters of one alphabetic script, or one Han/kana character, since those
//! scripts do not separate words; digits, punctuation and LaTeX commands
//! (`\frac`) are not words.

use serde::{Deserialize, Serialize};

/// A writing system, told apart by Unicode block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Script {
    Latin,
    Cyrillic,
    Greek,
    Arabic,
    Hebrew,
    Devanagari,
    Thai,
    Hangul,
    /// Han ideographs and Japanese kana.
    Cjk,
}

/// Every script, in the order [`WordCounts`] stores them.
pub const SCRIPTS: [Script; 9] = [
    Script::Latin,
    Script::Cyrillic,
    Script::Greek,
    Script::Arabic,
    Script::Hebrew,
    Script::Devanagari,
    Script::Thai,
    Script::Hangul,
    Script::Cjk,
];

impl Script {
    /// The script of a letter, or `None` for anything that is not one.
    pub fn of(c: char) -> Option<Script> {
        let script = match c as u32 {
            _ if c.is_ascii_alphabetic() => Script::Latin,
            0x00C0..=0x024F | 0x1E00..=0x1EFF if c.is_alphabetic() => Script::Latin,
            0x0370..=0x03FF | 0x1F00..=0x1FFF => Script::Greek,
            0x0400..=0x052F => Script::Cyrillic,
            0x0590..=0x05FF => Script::Hebrew,
            0x0600..=0x06FF | 0x0750..=0x077F => Script::Arabic,
            0x0900..=0x097F => Script::Devanagari,
            0x0E00..=0x0E7F => Script::Thai,
            0x1100..=0x11FF | 0x3130..=0x318F | 0xAC00..=0xD7AF => Script::Hangul,
            0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF => Script::Cjk,
            _ => return None,
        };
        c.is_alphabetic().then_some(script)
    }

    /// The script an ISO 639-1 language code is written in (`en`, `zh`,
    /// `ru`, …), or a script's own name (`latin`, `cjk`, …).
    pub fn for_language(code: &str) -> Option<Script> {
        let code = code.trim().to_ascii_lowercase();
        let primary = code.split(['-', '_']).next().unwrap_or("");
        let script = match primary {
            "en" | "fr" | "de" | "es" | "it" | "pt" | "nl" | "sv" | "da" | "no" | "nb" | "fi"
            | "pl" | "cs" | "sk" | "ro" | "hu" | "tr" | "vi" | "id" | "ms" | "ca" | "hr" | "sl"
            | "et" | "lv" | "lt" | "sw" | "tl" | "latin" => Script::Latin,
            "ru" | "uk" | "bg" | "sr" | "mk" | "be" | "kk" | "cyrillic" => Script::Cyrillic,
            "el" | "greek" => Script::Greek,
            "ar" | "fa" | "ur" | "arabic" => Script::Arabic,
            "he" | "yi" | "hebrew" => Script::Hebrew,
            "hi" | "mr" | "ne" | "devanagari" => Script::Devanagari,
            "th" | "thai" => Script::Thai,
            "ko" | "hangul" => Script::Hangul,
            "zh" | "ja" | "cjk" => Script::Cjk,
            _ => return None,
        };
        Some(script)
    }

    /// The lower-case name, as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Script::Latin => "latin",
            Script::Cyrillic => "cyrillic",
            Script::Greek => "greek",
            Script::Arabic => "arabic",
            Script::Hebrew => "hebrew",
            Script::Devanagari => "devanagari",
            Script::Thai => "thai",
            Script::Hangul => "hangul",
            Script::Cjk => "cjk",
        }
    }

    fn index(self) -> usize {
        SCRIPTS.iter().position(|&s| s == self).unwrap_or(0)
    }
}

/// Words per script in one text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WordCounts([usize; SCRIPTS.len()]);

impl WordCounts {
    /// Counts the words of `text`.
    pub fn of(text: &str) -> Self {
        let mut counter = WordCounter::default();
        counter.push(text);
        counter.counts()
    }

    /// All words.
    pub fn total(&self) -> usize {
        self.0.iter().sum()
    }

    /// Words in `script`.
    pub fn get(&self, script: Script) -> usize {
        self.0[script.index()]
    }

    /// The share of words in `script`; `None` when there are no words.
    pub fn share(&self, script: Script) -> Option<f64> {
        let total = self.total();
        (total > 0).then(|| self.get(script) as f64 / total as f64)
    }

    /// The script most words are in (the first in [`SCRIPTS`] on a tie).
    pub fn dominant(&self) -> Option<Script> {
        let (best, count) =
            SCRIPTS
                .iter()
                .map(|&s| (s, self.get(s)))
                .fold(
                    (Script::Latin, 0),
                    |acc, x| if x.1 > acc.1 { x } else { acc },
                );
        (count > 0).then_some(best)
    }
}

/// Counts words of a text that arrives in pieces (a streamed reasoning),
/// so a word split across pieces counts once and each piece costs only its
/// own length.
#[derive(Clone, Debug, Default)]
pub struct WordCounter {
    counts: WordCounts,
    /// The script of the word the last character was part of (none for
    /// CJK, where every character is a word).
    current: Option<Script>,
    /// Inside a TeX command name (`\frac`), which is not a word.
    in_command: bool,
}

impl WordCounter {
    /// Counts the words of the next piece.
    pub fn push(&mut self, piece: &str) {
        for c in piece.chars() {
            if c == '\\' {
                self.in_command = true;
                self.current = None;
                continue;
            }
            let script = Script::of(c);
            if self.in_command && script.is_some() {
                continue;
            }
            self.in_command = false;
            match script {
                Some(Script::Cjk) => self.counts.0[Script::Cjk.index()] += 1,
                Some(s) if self.current != Some(s) => self.counts.0[s.index()] += 1,
                _ => {}
            }
            self.current = script.filter(|&s| s != Script::Cjk);
        }
    }

    /// The words counted so far.
    pub fn counts(&self) -> WordCounts {
        self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_per_script() {
        let c = WordCounts::of("Let x be 3. Тогда 所以答案 \\frac{1}{2} café ok");
        assert_eq!(c.get(Script::Latin), 5, "{c:?}");
        assert_eq!(c.get(Script::Cyrillic), 1);
        assert_eq!(c.get(Script::Cjk), 4);
        assert_eq!(c.total(), 10);
        assert_eq!(c.share(Script::Cjk), Some(0.4));
        assert_eq!(c.dominant(), Some(Script::Latin));
        assert_eq!(WordCounts::of("12 + 3 = 15").share(Script::Latin), None);
        assert_eq!(WordCounts::of("안녕 하세요").get(Script::Hangul), 2);
        assert_eq!(WordCounts::of("Ελληνικά").dominant(), Some(Script::Greek));
    }

    #[test]
    fn pieces_count_as_the_whole_text() {
        let text = "Let x be 3. Тогда 所以答案 \\frac{1}{2} café ok";
        let mut counter = WordCounter::default();
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(3) {
            counter.push(&piece.iter().collect::<String>());
        }
        assert_eq!(counter.counts(), WordCounts::of(text));
    }

    #[test]
    fn language_codes() {
        assert_eq!(Script::for_language("en-US"), Some(Script::Latin));
        assert_eq!(Script::for_language("zh_CN"), Some(Script::Cjk));
        assert_eq!(Script::for_language("RU"), Some(Script::Cyrillic));
        assert_eq!(Script::for_language("cjk"), Some(Script::Cjk));
        assert_eq!(Script::for_language("xx"), None);
    }
}
